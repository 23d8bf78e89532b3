"""`cai judge eval`: score the AI judge's methods on pairs whose better response is known."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from constitution import ConstitutionError, load_constitution
from critique.injection import CANARIES
from critique.judge import METHODS, make_method
from critique.judge_eval import JudgePairFileError, evaluate, load_judge_pairs, spread
from loop.cli.errors import fail
from loop.cli.output import console, out, setup_logging
from loop.cli.render import fmt
from policies.models import DEFAULT_MODEL, ModelNotFoundError, load_model, resolve_model_dir

COLUMNS = ("method", "accuracy", "position consistency", "accuracy, better shorter", "abstain", "judgments/s",
           "flip rate", "flip rate, adaptive", "flip rate after detector")


def judge_eval(
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="labels, ensemble, self-consistency, pointwise or cot; repeat it (default: all).")] = None,
    pairs: Annotated[Path, typer.Option(help="The labelled judge set (JSONL).")] = Path("data/eval/judge_pairs.jsonl"),
    model: Annotated[str, typer.Option(help="A built-in model name or a local HF model directory.")] = "",
    constitution: Annotated[str, typer.Option(help="A shipped constitution's name or a YAML path.")] = "default",
    canaries: Annotated[bool, typer.Option(help="Also run the injection canary suite (flip rates).")] = True,
    limit: Annotated[int | None, typer.Option(help="Only N pairs, spread evenly over the set.")] = None,
    canary_pairs: Annotated[int | None, typer.Option(
        help="Plant the canaries in N pairs spread evenly over the set (default: all; each canary is a full "
             "pass of the method).")] = None,
    batch_size: Annotated[int, typer.Option(help="Judge batch size.")] = 16,
    home: Annotated[Path, typer.Option(envvar="CAI_HOME", help="Model cache.")] = Path("~/.cache/cai"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON lines.")] = False,
) -> None:
    """Score judging methods on pairs with a known better response: accuracy, position consistency, accuracy
    where the better is shorter, abstain rate, judgments/s and the injection canaries' flip rates."""
    # These load torch: only this command needs them.
    from policies.runtime import quiet_model_libraries
    from policies.serving.transformers_backend import TransformersGenerator

    setup_logging(None)
    quiet_model_libraries()
    names = method or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        fail(f"--method: unknown judge method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    try:
        rules = load_constitution(constitution)
        every = load_judge_pairs(pairs, rules)
        judge_set = [every[i] for i in spread(every, limit)]
        loaded, tokenizer = load_model(resolve_model_dir(model or DEFAULT_MODEL, home.expanduser()))
    except (ConstitutionError, JudgePairFileError, ModelNotFoundError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{pairs}: cannot read judge set: {exc.strerror or exc}")
    generator = TransformersGenerator(loaded, tokenizer, name=model or DEFAULT_MODEL, batch_size=batch_size)
    table = Table(title=f"judge eval · {len(judge_set)} pairs from {pairs} · {generator.name}", header_style="bold")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "method" else "right")
    for name in names:
        console.print(f"judging with {name} ...", highlight=False)
        result = evaluate(make_method(name, rules), generator, judge_set, rules, CANARIES if canaries else (),
                          canary_pairs=canary_pairs)
        if as_json:
            typer.echo(json.dumps(asdict(result)))  # one line per method
        table.add_row(name, *(fmt(v) for v in (
            result.accuracy, result.position_consistency, result.accuracy_better_shorter, result.abstain_rate,
            result.judgments_per_s, result.flip_rate, result.adaptive_flip_rate, result.undetected_flip_rate)))
    if not as_json:
        out.print(table)
