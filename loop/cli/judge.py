"""`cai judge eval`: score the AI judge's methods on pairs whose better response is known."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from constitution import ConstitutionError, load_constitution
from critique.canaries import CANARIES, SPLITS
from critique.consistency import checked
from critique.judge import METHODS, make_method
from critique.judge_eval import JudgePairFileError, MethodScore, evaluate, load_judge_pairs, spread
from loop.cli.errors import fail
from loop.cli.output import console, out, setup_logging
from loop.cli.render import fmt
from policies.models import DEFAULT_MODEL, ModelNotFoundError, load_model, resolve_model_dir

COLUMNS = ("method", "accuracy", "position consistency", "accuracy, better shorter", "abstain", "judgments/s",
           "suspect, clean")


def _flips(raw: float | None, after: float | None) -> str:
    return f"{fmt(raw)} → {fmt(after)}"


def _style_table(results: list[MethodScore]) -> Table:
    """Each canary style's flip rate per method, before and after the defences."""
    table = Table(title="flip rate per injection style: raw → after the defences", header_style="bold")
    for column in ("style", "split", *(r.method for r in results)):
        table.add_column(column, justify="left" if column in ("style", "split") else "right")
    for split in SPLITS:  # the split's styles together first
        table.add_row(f"[bold]all {split}[/]", split, *(_flips(r.flip_rate(split), r.flip_rate(
            split, after_defences=True)) for r in results))
    for row, style in enumerate(results[0].styles):
        cells = []
        for result in results:
            s = result.styles[row]
            cells.append(_flips(s.flipped / s.against, s.slipped / s.against) if s.against else "-")
        table.add_row(style.name, style.split, *cells)
    return table


def judge_eval(
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="labels, ensemble, self-consistency, pointwise or cot; repeat it (default: all).")] = None,
    pairs: Annotated[Path, typer.Option(help="The labelled judge set (JSONL).")] = Path("data/eval/judge_pairs.jsonl"),
    model: Annotated[str, typer.Option(help="A built-in model name or a local HF model directory.")] = "",
    constitution: Annotated[str, typer.Option(help="A shipped constitution's name or a YAML path.")] = "default",
    canaries: Annotated[bool, typer.Option(help="Also run the injection canary suite (flip rates).")] = True,
    limit: Annotated[int | None, typer.Option(help="Only N pairs, spread evenly over the set.")] = None,
    canary_pairs: Annotated[int, typer.Option(
        min=1, help=f"Plant the canaries in N pairs spread evenly over the set: each of the {len(CANARIES)} canary "
                    "styles is a pass of the method over them (the whole shipped set takes hours on CPU).")] = 12,
    consistency_units: Annotated[int, typer.Option(
        help="The consistency check: judge each winner again without each of its first N parts (0: off; the "
             "pipeline's judge.consistency_units).")] = 4,
    batch_size: Annotated[int, typer.Option(help="Judge batch size.")] = 16,
    home: Annotated[Path, typer.Option(envvar="CAI_HOME", help="Model cache.")] = Path("~/.cache/cai"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON lines.")] = False,
) -> None:
    """Score judging methods on pairs with a known better response: accuracy, position consistency, accuracy
    where the better is shorter, abstain rate, judgments/s, the consistency check's false alarms, and each injection
    style's flip rate before and after the defences (built-on, held-out and generated styles)."""
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
    results = []
    for name in names:
        console.print(f"judging with {name} ...", highlight=False)
        result = evaluate(checked(make_method(name, rules), consistency_units), generator, judge_set, rules,
                          CANARIES if canaries else (), canary_pairs=canary_pairs)
        results.append(result)
        if as_json:
            typer.echo(json.dumps(asdict(result)))  # one line per method
        table.add_row(name, *(fmt(v) for v in (
            result.accuracy, result.position_consistency, result.accuracy_better_shorter, result.abstain_rate,
            result.judgments_per_s, result.suspect_clean)))
    if not as_json:
        out.print(table)
        if canaries:
            out.print(_style_table(results))
