"""`cai review list|keep|flip|drop`: a reviewer's verdict on a preference pair overrides the AI label (`cai export
pairs`, in `loop.cli.export`, applies them)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from loop.cli.errors import fail
from loop.cli.options import RunDir, open_store
from loop.cli.output import out
from loop.cli.render import fmt
from loop.operate.review import ReviewError, record_review
from loop.operate.summary import latest_reviews, review_agreement
from loop.store import Iteration, Pair

PairId = Annotated[int, typer.Argument(help="The pair's id (from `cai review list`).")]
Note = Annotated[str, typer.Option("--note", help="Why.")]
Reviewer = Annotated[str | None, typer.Option(help="Who reviews (default: the login name).")]


def review_list(
    run_dir: RunDir,
    iteration: Annotated[int | None, typer.Option(help="Only this iteration's pairs.")] = None,
    width: Annotated[int, typer.Option(help="Characters of each text shown.")] = 60,
) -> None:
    """The pairs with their AI label and latest review, and the reviewers' agreement with the judge."""
    store = open_store(run_dir)
    with store.session() as session:
        query = select(Pair, Iteration.index).join(Iteration, Pair.iteration_id == Iteration.id).order_by(Pair.id)
        if iteration is not None:
            query = query.where(Iteration.index == iteration)
        rows = session.execute(query).all()
        reviews = latest_reviews(session)
        agreement = review_agreement(session, None)
    store.dispose()
    table = Table(title=f"pairs in {run_dir}", header_style="bold")
    for column in ("pair", "iter", "source", "principle", "label", "chosen", "rejected", "review"):
        table.add_column(column)
    for pair, index in rows:
        review = reviews.get(pair.id)
        table.add_row(str(pair.id), str(index), pair.source, pair.principle_id or "-", f"{pair.target:.2f}",
                      escape(pair.chosen[:width]), escape(pair.rejected[:width]),
                      escape(f"{review.verdict} ({review.reviewer}) {review.note}") if review else "")
    out.print(table)
    out.print(f"reviewed {agreement['reviewed']}: kept {agreement['kept']}, flipped {agreement['flipped']}, "
              f"dropped {agreement['dropped']}; agreement with the judge {fmt(agreement['agreement'])}",
              highlight=False)


def _review(run_dir: Path, pair_id: int, verdict: str, note: str, reviewer: str | None) -> None:
    store = open_store(run_dir)
    try:
        record_review(store, pair_id, verdict, reviewer=reviewer or getpass.getuser(), note=note)
    except ReviewError as exc:
        fail(f"{exc}; `cai review list --run-dir {run_dir}` shows them")
    finally:
        store.dispose()
    out.print(f"pair {pair_id}: {verdict}", highlight=False)


def review_keep(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """Agree with the AI label."""
    _review(run_dir, pair, "keep", note, reviewer)


def review_flip(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """The rejected response is the better one: chosen and rejected are swapped."""
    _review(run_dir, pair, "flip", note, reviewer)


def review_drop(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """The pair must not be trained on."""
    _review(run_dir, pair, "drop", note, reviewer)

