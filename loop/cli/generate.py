"""`cai generate`: answer a prompt file with any policy of a run, on either backend, optionally best of n
(`loop.pipeline.generate_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from loop.cli.errors import fail, failures_reported
from loop.cli.output import console, out, setup_logging
from loop.operate.export_policy import VERSIONS
from loop.pipeline.generate_file import SCORERS, GenerateRefused, Options, generate_file, resolve_source
from loop.progress import RichReporter


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _summary(summary: dict[str, Any]) -> Table:
    """The run of the command in one row per figure (a wide table wraps on a terminal)."""
    table = Table(title=f"policy {summary['policy']} ({summary['backend']}) -> {summary['out']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = {"prompts": summary["prompts"], "samples": summary["samples"], "best of": summary["best_of"],
            "scorer": summary["scorer"], "mean chosen score": summary["mean_chosen_score"],
            "mean first-sample score": summary["mean_first_score"], "time (s)": summary["wall_s"],
            "samples/s (generation)": summary["samples_per_s"]}
    for name, value in rows.items():
        table.add_row(name, _number(value))
    return table


def generate(
    prompts: Annotated[Path, typer.Argument(help="The prompts to answer: {id?, prompt, category?} records in JSONL, "
                                            "CSV, parquet or a datasets folder.")],
    output: Annotated[Path, typer.Option("--out", help="The JSONL to write: one answer per prompt.")],
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="The run whose policy answers (not needed for "
                                                 "--policy base).")] = None,
    policy: Annotated[str, typer.Option("--policy", help=f"The policy: {VERSIONS}.")] = "current",
    backend: Annotated[str | None, typer.Option(help="transformers or vllm-server (default: the run's).")] = None,
    server_url: Annotated[str | None, typer.Option(help="vllm-server: the server (default: the run's).")] = None,
    best_of: Annotated[int, typer.Option("--best-of", help="Samples per prompt; the best by --scorer is kept.")] = 1,
    scorer: Annotated[str | None, typer.Option(help=f"Scores the samples: {', '.join(SCORERS)}.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: the run's generation setting.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Default: the run's generation setting.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Default: the run's generation setting.")] = None,
    seed: Annotated[int | None, typer.Option(help="Default: the run's seed.")] = None,
    limit: Annotated[int | None, typer.Option(help="Answer only the first N prompts.")] = None,
    model: Annotated[str | None, typer.Option(help="Without --run-dir: the base model (default: SmolLM2).")] = None,
) -> None:
    """Answer a prompt file with a policy of a run (or the base model): each prompt's answer, with --best-of N the
    best of N samples by the scorer, with its score and the scores and texts of the samples it beat."""
    if backend is not None and backend not in ("transformers", "vllm-server"):
        fail(f"--backend {backend}: not one of transformers, vllm-server")
    setup_logging(None)
    with failures_reported():
        try:
            source = resolve_source(run_dir, policy, backend=backend, server_url=server_url, model=model)
            summary = generate_file(source, prompts, output,
                                    Options(best_of, scorer, max_new_tokens, temperature, top_p, seed, limit),
                                    RichReporter(console))
        except GenerateRefused as exc:
            fail(str(exc))
    out.print(_summary(summary))
