"""The rich tables of results: an iteration's summary, an evaluation, and the number format they share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.markup import escape
from rich.table import Table

from loop.cli.output import out
from loop.operate.summary import HEADLINE_METRICS


def fmt(value: Any) -> str:
    """A table cell: `-` for nothing, whole floats without decimals, others to 4 places."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4f}"
    return str(value)


def metric_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """`x_before`/`x_after` (or `x_first`/`x_last`) become one row `x  before → after`; others stay single."""
    rows, paired = [], set()
    for name, value in metrics.items():
        for start, end in (("_before", "_after"), ("_first", "_last")):
            base = name.removesuffix(start)
            if name.endswith(start) and base + end in metrics:
                rows.append((f"{base} {start[1:]} → {end[1:]}", f"{fmt(value)} → {fmt(metrics[base + end])}"))
                paired |= {name, base + end}
    singles = [(name, fmt(value)) for name, value in metrics.items() if name not in paired]
    return rows + singles


def show(result: dict[str, Any], *, as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """A command's result on stdout: as JSON for scripts, or rendered as a table."""
    if as_json:
        out.print_json(json.dumps(result))
    else:
        render(result)


def render_summary(summary: dict[str, Any]) -> None:
    """An iteration's summary (`loop.operate.summary.iteration_summary`) as one table on stdout."""
    title = (f"run {summary['run']} · iteration {summary['iteration']} ({summary['status']}) · "
             f"{summary['policy_in']} → {summary['policy_version'] or 'no new policy'} · "
             f"constitution {' → '.join(summary.get('constitution_hashes') or [summary['constitution_hash']])}")
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("value", justify="right")
    table.add_column("wall s", justify="right")
    wall = {stage: f"{seconds:.1f}" for stage, seconds in summary["wall_s"].items()}
    judge = summary["judge"]
    table.add_row("generate", "samples", fmt(summary["samples"]), fmt(wall.get("generate")))
    _rate_row(table, "answers/s", summary.get("answers_generated"), summary["wall_s"].get("generate"))
    table.add_row("critique", "critiques / revisions", f"{summary['critiques']} / {summary['revisions']}",
                  fmt(wall.get("critique")))
    _rate_row(table, "critiques/s", summary["critiques"], summary["wall_s"].get("critique"))
    table.add_row("judge", "comparisons", fmt(summary["comparisons"]), fmt(wall.get("judge")))
    _rate_row(table, "verdicts/s", summary["comparisons"], summary["wall_s"].get("judge"))
    table.add_row("", "mean p(revision better)", fmt(judge["mean_p_revision_better"]), "")
    table.add_row("", "both orders agree", fmt(judge["order_agreement"]), "")
    table.add_row("", f"abstained ({judge.get('method') or '-'})", fmt(judge.get("abstained")), "")
    table.add_row("", "suspect (consistency check)", fmt(judge.get("suspect")), "")
    table.add_row("pairs", "kept pairs", fmt(summary["pairs"]), fmt(wall.get("pairs")))
    for source, n in summary.get("pair_sources", {}).items():
        table.add_row("", f"from {source}", fmt(n), "")
    sampler = summary.get("sampler", {})
    for name, value in sampler.items():
        if name.startswith("dropped_"):
            table.add_row("", f"dropped: {name.removeprefix('dropped_')}", fmt(value), "")
    if "length_diff_before" in sampler:
        table.add_row("", "chosen − rejected chars, before → after",
                      f"{fmt(sampler['length_diff_before'])} → {fmt(sampler.get('length_diff_after'))}", "")
    if "margin" in sampler:
        table.add_row("", "confidence margin", fmt(sampler["margin"]), "")
    review = summary.get("review") or {}
    if review.get("reviewed"):
        table.add_row("review", f"reviewed (kept / flipped / dropped {review['kept']} / {review['flipped']} / "
                      f"{review['dropped']})", fmt(review["reviewed"]), "")
        table.add_row("", "agreement with the judge", fmt(review["agreement"]), "")
    table.add_row("train", f"trainer: {summary['trainer'] or '-'}", "", fmt(wall.get("train")))
    for section in ("sft", "reward_model", "train"):
        for label, value in metric_rows(summary[section]):
            # Reward components name constraints (`task/keyword:…`): text, never markup.
            table.add_row("", escape(f"{section}: {label}" if section != "train" else label), value, "")
    for stage, served in summary.get("serving", {}).items():
        table.add_row("vLLM", f"{stage}: prefix-cache hit rate", fmt(served.get("prefix_cache_hit_rate")), "")
        table.add_row("", f"{stage}: generated tokens/s", fmt(served.get("generated_tokens_per_s")), "")
    counted = summary.get("control_tokens_in_answers") or {}
    if any(counted.values()):  # a row of zeros would only widen the table
        table.add_row("answers", "spelling a control token", " · ".join(f"{k} {v}" for k, v in counted.items()), "")
    evaluation, gate = summary.get("evaluation"), summary.get("gate")
    if evaluation:
        table.add_row("evaluate", f"{evaluation['policy']} vs {evaluation['previous']} "
                      f"({evaluation['refusal_classifier']})", "", fmt(wall.get("evaluate")))
        for name in HEADLINE_METRICS:
            if name in evaluation["metrics"]:
                table.add_row("", name, fmt(evaluation["metrics"][name]), "")
        kept = evaluation["metrics"]
        if kept.get("base_answers_from_cache") or kept.get("refusal_judge_scores_cached"):
            # Short cells: a narrow terminal squeezes the whole table for the widest one.
            cached = [f"{fmt(kept['base_answers_from_cache'])} base answers"] if kept.get("base_answers_from_cache") \
                else []
            cached += ["judge scores"] if kept.get("refusal_judge_scores_cached") else []
            table.add_row("", "from the cache", " + ".join(cached), "")
    if gate:
        table.add_row("gates", f"[bold]{gate['outcome']}[/] {gate['candidate'] or ''}",
                      f"current {gate['current_policy']}", "")
        for reason in gate["reasons"]:
            table.add_row("", escape(reason), "", "")
    out.print(table)


def _rate_row(table: Table, what: str, done: int | None, seconds: float | None) -> None:
    """A stage's throughput, where it did something."""
    if done and seconds:
        table.add_row("", what, f"{done / seconds:.2f}", "")


def render_evaluation(result: dict[str, Any]) -> None:
    """`cai eval`'s result: every metric of the evaluation."""
    table = Table(title=f"{result['policy']} against {result['against']} (and the base) · refusal classifier "
                  f"{result['refusal_classifier']}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name, fmt(value))
    out.print(table)
