"""Export a run's preference pairs in TRL's conversational layout (prompt / chosen / rejected as message
lists), with the soft label, principle, iteration and source as extra columns. Reviews apply: a flipped pair
is exported flipped (its label becomes the reviewer's certainty), a dropped pair is left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from loop.operate.summary import latest_reviews
from loop.store import Iteration, Pair, Sample
from policies.files import atomic_write_text

Format = Literal["jsonl", "parquet"]


def pair_records(session: Session) -> list[dict[str, Any]]:
    reviews = latest_reviews(session)
    records = []
    rows = session.execute(
        select(Pair, Sample.prompt, Iteration.index).join(Sample, Pair.sample_id == Sample.id)
        .join(Iteration, Pair.iteration_id == Iteration.id).order_by(Pair.id)).all()
    for pair, prompt, iteration in rows:
        review = reviews.get(pair.id)
        verdict = review.verdict if review else None
        if verdict == "drop":
            continue
        chosen, rejected = (pair.rejected, pair.chosen) if verdict == "flip" else (pair.chosen, pair.rejected)
        records.append({
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "pair_id": pair.id,
            "target": 1.0 if verdict else pair.target,
            "principle_id": pair.principle_id or "",
            "iteration": iteration,
            "source": pair.source,
            "review": verdict or "",
        })
    return records


def write_pairs(records: list[dict[str, Any]], path: Path, fmt: Format) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(records), tmp)
        tmp.replace(path)
    return path
