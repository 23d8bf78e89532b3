"""The `cai` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="cai: Constitutional AI and RLAIF self-improvement.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
principles_app = typer.Typer(help="Work with principle (constitution) files.", no_args_is_help=True)
app.add_typer(principles_app, name="principles")

console = Console(stderr=True)
out = Console()

RunDir = Annotated[Path, typer.Option("--run-dir", help="Directory holding the run's database and adapters.")]


def _setup_logging(run_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [RichHandler(console=console, level=logging.WARNING, show_path=False)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "cai.log")
        file.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"))
        file.setLevel(logging.INFO)
        handlers.append(file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str) -> None:
    console.print("[bold red]error:[/]", escape(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def iterate(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML, e.g. configs/quickstart.yaml.")],
    run_dir: RunDir,
) -> None:
    """Run one iteration (or finish an interrupted one): generate, critique, revise, judge, train, evaluate,
    then the gates promote, reject or halt."""
    from constitution import ConstitutionError
    from loop.config import ConfigError, load_run_config
    from loop.iteration import run_iteration
    from loop.progress import RichReporter
    from loop.promotion import RunHalted
    from loop.prompts import PromptFileError
    from policies.models import ModelNotFoundError
    from policies.runtime import quiet_model_libraries
    from policies.serving.vllm_client import ServerError

    _setup_logging(run_dir)
    quiet_model_libraries()
    try:
        summary = run_iteration(load_run_config(config), run_dir, RichReporter(console))
    except (ConfigError, ConstitutionError, PromptFileError, ModelNotFoundError, ServerError, RunHalted) as exc:
        _fail(str(exc))
    render_summary(summary)
    console.print(f"run directory: {run_dir}  (database: {run_dir / 'cai.db'}, log: {run_dir / 'cai.log'})")


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML: its model and generation.server.")],
    url: Annotated[str | None, typer.Option(help="Where to listen (default: generation.server.url).")] = None,
    log: Annotated[Path | None, typer.Option(help="Server log (default: CAI_HOME/vllm/server-PORT.log).")] = None,
) -> None:
    """Start a vLLM OpenAI-compatible server (CPU build) for the config's base model; Ctrl-C stops it.

    First use creates the vLLM environment under CAI_HOME (minutes). The URL goes to stdout once it is ready.
    """
    import signal

    from loop.config import ConfigError, load_run_config
    from policies.models import ModelNotFoundError, resolve_model_dir
    from policies.serving.vllm_env import VllmEnvError, ensure_vllm_env, vllm_env_dir
    from policies.serving.vllm_server import VllmServer, VllmStartError, host_and_port, served_model_name

    _setup_logging(None)
    try:
        run_config = load_run_config(config)
        settings = run_config.generation.server
        # The same precision as the transformers backend unless the server section says otherwise.
        settings = settings.model_copy(update={"dtype": settings.dtype or run_config.model.dtype})
        url = (url or settings.url).rstrip("/")
        port = host_and_port(url)[1]
        home = run_config.home
        console.print(f"vLLM environment: {vllm_env_dir(home)} (created on first use)", highlight=False)
        python = ensure_vllm_env(home)
        model_dir = resolve_model_dir(run_config.model.name, home)
        name = served_model_name(run_config.model.name)
        server = VllmServer.start(python, model_dir, served_name=name, settings=settings,
                                  lora_rank=run_config.train.lora.r,
                                  log_path=log or home / "vllm" / f"server-{port}.log",
                                  url=url)
    except (ConfigError, ModelNotFoundError, VllmEnvError, VllmStartError, ValueError) as exc:
        _fail(str(exc))
    # SIGTERM (a service manager, `kill`) stops the server too: it runs in its own process group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        console.print(f"starting {name} from {model_dir} (log: {server.log_path})", highlight=False)
        seconds = server.wait_ready(settings.start_timeout_s)
        console.print(f"ready in {seconds:.0f} s at {server.url}. Use it with `generation.backend: vllm-server` "
                      f"and `generation.server.url: {server.url}`. Ctrl-C stops it.", highlight=False)
        out.print(server.url, highlight=False)
        code = server.process.wait()
        _fail(f"the vLLM server exited with code {code}; last lines of {server.log_path}:\n{server.log_tail()}")
    except VllmStartError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("stopping the vLLM server")
    finally:
        server.stop()


@app.command()
def status(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    iteration: Annotated[int | None, typer.Option(help="Iteration index (default: the latest).")] = None,
) -> None:
    """Summarise an iteration of a run from its database."""
    from loop.summary import iteration_summary, latest_iteration

    store = _open_run(run_dir)
    with store.session() as session:
        found = latest_iteration(session, iteration)
        if found is None:
            _fail(f"no iteration {iteration if iteration is not None else ''} in {run_dir}".replace("  ", " "))
        summary = iteration_summary(session, found)
    store.dispose()
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        render_summary(summary)


@principles_app.command("check")
def principles_check(paths: Annotated[list[Path], typer.Argument(help="YAML files or folders of them.")]) -> None:
    """Validate principle files; every problem is printed as FILE:LINE: FIELD: PROBLEM."""
    from constitution import ConstitutionError, load_constitution

    files = [f for p in paths for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    if not files:
        _fail("no YAML files found in " + ", ".join(map(str, paths)))
    failed = False
    for file in files:
        try:
            constitution = load_constitution(file)
        except ConstitutionError as exc:
            failed = True
            for problem in exc.problems:
                typer.echo(str(problem))
            continue
        typer.echo(f"{file}: ok: {len(constitution.principles)} principles, hash {constitution.content_hash}")
    if failed:
        raise typer.Exit(code=1)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4f}"
    return str(value)


def _metric_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """`x_before`/`x_after` (or `x_first`/`x_last`) become one row `x  before → after`; others stay single."""
    rows, paired = [], set()
    for name, value in metrics.items():
        for start, end in (("_before", "_after"), ("_first", "_last")):
            base = name.removesuffix(start)
            if name.endswith(start) and base + end in metrics:
                rows.append((f"{base} {start[1:]} → {end[1:]}", f"{_fmt(value)} → {_fmt(metrics[base + end])}"))
                paired |= {name, base + end}
    singles = [(name, _fmt(value)) for name, value in metrics.items() if name not in paired]
    return rows + singles


def render_summary(summary: dict[str, Any]) -> None:
    title = (f"run {summary['run']} · iteration {summary['iteration']} ({summary['status']}) · "
             f"{summary['policy_in']} → {summary['policy_version'] or 'no new policy'} · "
             f"constitution {summary['constitution_hash']}")
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("value", justify="right")
    table.add_column("wall s", justify="right")
    wall = {stage: f"{seconds:.1f}" for stage, seconds in summary["wall_s"].items()}
    judge = summary["judge"]
    table.add_row("generate", "samples", _fmt(summary["samples"]), _fmt(wall.get("generate")))
    table.add_row("critique", "critiques / revisions", f"{summary['critiques']} / {summary['revisions']}",
                  _fmt(wall.get("critique")))
    table.add_row("judge", "comparisons", _fmt(summary["comparisons"]), _fmt(wall.get("judge")))
    table.add_row("", "mean p(revision better)", _fmt(judge["mean_p_revision_better"]), "")
    table.add_row("", "both orders agree", _fmt(judge["order_agreement"]), "")
    table.add_row("pairs", "kept pairs", _fmt(summary["pairs"]), _fmt(wall.get("pairs")))
    table.add_row("train", f"trainer: {summary['trainer'] or '-'}", "", _fmt(wall.get("train")))
    for section in ("sft", "reward_model", "train"):
        for label, value in _metric_rows(summary[section]):
            table.add_row("", f"{section}: {label}" if section != "train" else label, value, "")
    for stage, served in summary.get("serving", {}).items():
        table.add_row("vLLM", f"{stage}: prefix-cache hit rate", _fmt(served.get("prefix_cache_hit_rate")), "")
        table.add_row("", f"{stage}: generated tokens/s", _fmt(served.get("generated_tokens_per_s")), "")
    evaluation, gate = summary.get("evaluation"), summary.get("gate")
    if evaluation:
        table.add_row("evaluate", f"{evaluation['policy']} vs {evaluation['previous']} "
                      f"({evaluation['refusal_classifier']})", "", _fmt(wall.get("evaluate")))
        from loop.summary import HEADLINE_METRICS

        for name in HEADLINE_METRICS:
            if name in evaluation["metrics"]:
                table.add_row("", name, _fmt(evaluation["metrics"][name]), "")
    if gate:
        table.add_row("gates", f"[bold]{gate['outcome']}[/] {gate['candidate'] or ''}",
                      f"current {gate['current_policy']}", "")
        for reason in gate["reasons"]:
            table.add_row("", escape(reason), "", "")
    out.print(table)


def _version(text: str) -> int:
    try:
        return int(text.removeprefix("v"))
    except ValueError:
        _fail(f"not a policy version: {text!r} (expected N or vN)")
        raise  # unreachable: _fail exits


def _open_run(run_dir: Path):
    from loop.store import Store

    if not (run_dir / "cai.db").is_file():
        _fail(f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`")
    return Store.for_run_dir(run_dir)


def render_evaluation(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['policy']} against {result['against']} (and the base) · refusal classifier "
                  f"{result['refusal_classifier']}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name, _fmt(value))
    out.print(table)


@app.command("eval")
def eval_policy(
    run_dir: RunDir,
    policy: Annotated[str, typer.Option("--policy", help="The policy to measure (N or vN).")],
    against: Annotated[str | None, typer.Option("--against", help="The policy to compare with (default: the one "
                                                                  "it was trained from).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    recompute: Annotated[bool, typer.Option(help="Measure again even if this pair was measured before.")] = False,
) -> None:
    """Measure a policy on the held-out sets against another and the base; print the metrics."""
    from sqlalchemy import select

    from loop.config import ConfigError, load_run_config
    from loop.evaluation.harness import Evaluator
    from loop.progress import RichReporter
    from loop.promotion import evaluation_metrics
    from loop.prompts import PromptFileError
    from loop.store import Evaluation, Policy, Run
    from policies.models import ModelNotFoundError
    from policies.runtime import configure_threads, quiet_model_libraries

    store = _open_run(run_dir)
    _setup_logging(run_dir)
    quiet_model_libraries()
    version = _version(policy)
    with store.session() as session:
        run = session.scalar(select(Run).order_by(Run.id))
        row = session.scalar(select(Policy).where(Policy.run_id == run.id, Policy.version == version))
        if row is None:
            _fail(f"no policy v{version} in {run_dir}")
        other = _version(against) if against is not None else (row.parent_version or 0)
        found = None if recompute else session.scalar(
            select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.policy_version == version,
                                     Evaluation.previous_version == other).order_by(Evaluation.id.desc()))
    try:
        if found is None:
            config = load_run_config(run_dir / "config.yaml")
            configure_threads(config.threads)
            from constitution import load_constitution

            evaluator = Evaluator(config, store, run_dir, run.id, load_constitution(config.constitution),
                                  RichReporter(console))
            found_id = evaluator.evaluate(version, other)
        else:
            found_id = found.id
    except (ConfigError, PromptFileError, ModelNotFoundError, KeyError) as exc:
        _fail(str(exc).strip("'\""))
    with store.session() as session:
        evaluation = session.get(Evaluation, found_id)
        result = {"policy": f"v{version}", "against": f"v{other}", "evaluation_id": evaluation.id,
                  "iteration_id": evaluation.iteration_id, "refusal_classifier": evaluation.refusal_classifier,
                  "metrics": evaluation_metrics(session, evaluation.id)}
    store.dispose()
    if as_json:
        out.print_json(json.dumps(result))
    else:
        render_evaluation(result)


@app.command()
def rollback(
    run_dir: RunDir,
    to: Annotated[str | None, typer.Option("--to", help="The policy to make current (default: the one the "
                                                        "current policy was trained from).")] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded with the move.")] = "operator rollback",
) -> None:
    """Move the current-policy pointer back (and resume a halted run); the move and its reason are recorded."""
    from sqlalchemy import select

    from loop.promotion import RollbackError
    from loop.promotion import rollback as move_back
    from loop.store import Run

    store = _open_run(run_dir)
    try:
        with store.session() as session:
            run = session.scalar(select(Run).order_by(Run.id))
            move = move_back(session, run.id, None if to is None else _version(to), reason)
            text = f"current policy: v{move.from_version} → v{move.to_version} ({move.reason})"
    except RollbackError as exc:
        _fail(str(exc))
    finally:
        store.dispose()
    out.print(text, highlight=False)


@app.command()
def metrics(run_dir: RunDir) -> None:
    """Print the run's evaluation metrics and gate outcomes in the Prometheus text format."""
    from loop.metrics_export import exposition

    store = _open_run(run_dir)
    try:
        typer.echo(exposition(store), nl=False)
    finally:
        store.dispose()


def main() -> None:  # pragma: no cover - `python -m loop.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
