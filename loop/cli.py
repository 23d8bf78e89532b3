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
judge_app = typer.Typer(help="Measure the AI judge.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")
review_app = typer.Typer(help="Review preference pairs: a reviewer's verdict overrides the AI label.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")
export_app = typer.Typer(help="Export a run's data.", no_args_is_help=True)
app.add_typer(export_app, name="export")

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
    """Run one iteration (or finish an interrupted one): generate, critique, revise, judge, train."""
    from constitution import ConstitutionError
    from loop.config import ConfigError, load_run_config
    from loop.iteration import run_iteration
    from loop.progress import RichReporter
    from loop.prompts import PromptFileError
    from policies.models import ModelNotFoundError
    from policies.runtime import quiet_model_libraries
    from policies.serving.vllm_client import ServerError

    _setup_logging(run_dir)
    quiet_model_libraries()
    try:
        summary = run_iteration(load_run_config(config), run_dir, RichReporter(console))
    except (ConfigError, ConstitutionError, PromptFileError, ModelNotFoundError, ServerError) as exc:
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
    from loop.store import Store
    from loop.summary import iteration_summary, latest_iteration

    if not (run_dir / "cai.db").is_file():
        _fail(f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`")
    store = Store.for_run_dir(run_dir)
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


@judge_app.command("eval")
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
    from dataclasses import asdict

    from constitution import ConstitutionError, load_constitution
    from critique.injection import CANARIES
    from critique.judge import METHODS, make_method
    from critique.judge_eval import JudgePairFileError, evaluate, load_judge_pairs, spread
    from policies.models import DEFAULT_MODEL, ModelNotFoundError, load_model, resolve_model_dir
    from policies.runtime import quiet_model_libraries
    from policies.serving.transformers_backend import TransformersGenerator

    _setup_logging(None)
    quiet_model_libraries()
    names = method or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        _fail(f"--method: unknown judge method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    try:
        rules = load_constitution(constitution)
        every = load_judge_pairs(pairs, rules)
        judge_set = [every[i] for i in spread(every, limit)]
        loaded, tokenizer = load_model(resolve_model_dir(model or DEFAULT_MODEL, home.expanduser()))
    except (ConstitutionError, JudgePairFileError, ModelNotFoundError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{pairs}: cannot read judge set: {exc.strerror or exc}")
    generator = TransformersGenerator(loaded, tokenizer, name=model or DEFAULT_MODEL, batch_size=batch_size)
    table = Table(title=f"judge eval · {len(judge_set)} pairs from {pairs} · {generator.name}", header_style="bold")
    for column in ("method", "accuracy", "position consistency", "accuracy, better shorter", "abstain",
                   "judgments/s", "flip rate", "flip rate, adaptive", "flip rate after detector"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name in names:
        console.print(f"judging with {name} ...", highlight=False)
        result = evaluate(make_method(name, rules), generator, judge_set, rules, CANARIES if canaries else (),
                          canary_pairs=canary_pairs)
        if as_json:
            typer.echo(json.dumps(asdict(result)))  # one line per method
        table.add_row(name, *(_fmt(v) for v in (
            result.accuracy, result.position_consistency, result.accuracy_better_shorter, result.abstain_rate,
            result.judgments_per_s, result.flip_rate, result.adaptive_flip_rate, result.undetected_flip_rate)))
    if not as_json:
        out.print(table)


def _open_store(run_dir: Path):
    from loop.store import Store

    if not (run_dir / "cai.db").is_file():
        _fail(f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`")
    return Store.for_run_dir(run_dir)


@review_app.command("list")
def review_list(
    run_dir: RunDir,
    iteration: Annotated[int | None, typer.Option(help="Only this iteration's pairs.")] = None,
    width: Annotated[int, typer.Option(help="Characters of each text shown.")] = 60,
) -> None:
    """The pairs with their AI label and latest review, and the reviewers' agreement with the judge."""
    from sqlalchemy import select

    from loop.store import Iteration, Pair
    from loop.summary import latest_reviews, review_agreement

    store = _open_store(run_dir)
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
              f"dropped {agreement['dropped']}; agreement with the judge {_fmt(agreement['agreement'])}",
              highlight=False)


def _review(run_dir: Path, pair_id: int, verdict: str, note: str, reviewer: str | None) -> None:
    import getpass

    from loop.store import Pair, Review

    store = _open_store(run_dir)
    with store.session() as session:
        if session.get(Pair, pair_id) is None:
            store.dispose()
            _fail(f"no pair {pair_id} in {run_dir}; `cai review list --run-dir {run_dir}` shows them")
        session.add(Review(pair_id=pair_id, verdict=verdict, note=note, reviewer=reviewer or getpass.getuser()))
    store.dispose()
    out.print(f"pair {pair_id}: {verdict}", highlight=False)


PairId = Annotated[int, typer.Argument(help="The pair's id (from `cai review list`).")]
Note = Annotated[str, typer.Option("--note", help="Why.")]
Reviewer = Annotated[str | None, typer.Option(help="Who reviews (default: the login name).")]


@review_app.command("keep")
def review_keep(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """Agree with the AI label."""
    _review(run_dir, pair, "keep", note, reviewer)


@review_app.command("flip")
def review_flip(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """The rejected response is the better one: chosen and rejected are swapped."""
    _review(run_dir, pair, "flip", note, reviewer)


@review_app.command("drop")
def review_drop(pair: PairId, run_dir: RunDir, note: Note = "", reviewer: Reviewer = None) -> None:
    """The pair must not be trained on."""
    _review(run_dir, pair, "drop", note, reviewer)


@export_app.command("pairs")
def export_pairs(
    run_dir: RunDir,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Default: RUN_DIR/export/pairs.FORMAT.")] = None,
) -> None:
    """The run's pairs in TRL's conversational prompt/chosen/rejected layout, with target, principle_id,
    iteration and source columns; reviews applied (flipped pairs swapped, dropped ones left out)."""
    from loop.export import pair_records, write_pairs

    if fmt not in ("jsonl", "parquet"):
        _fail(f"--format: {fmt!r} is not one of jsonl, parquet")
    store = _open_store(run_dir)
    with store.session() as session:
        records = pair_records(session)
    store.dispose()
    path = write_pairs(records, output or run_dir / "export" / f"pairs.{fmt}", fmt)  # type: ignore[arg-type]
    out.print(f"{len(records)} pairs -> {path}", highlight=False)


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
    table.add_row("", f"abstained ({judge.get('method') or '-'})", _fmt(judge.get("abstained")), "")
    table.add_row("pairs", "kept pairs", _fmt(summary["pairs"]), _fmt(wall.get("pairs")))
    for source, n in summary.get("pair_sources", {}).items():
        table.add_row("", f"from {source}", _fmt(n), "")
    sampler = summary.get("sampler", {})
    for name, value in sampler.items():
        if name.startswith("dropped_"):
            table.add_row("", f"dropped: {name.removeprefix('dropped_')}", _fmt(value), "")
    if "length_diff_before" in sampler:
        table.add_row("", "chosen − rejected chars, before → after",
                      f"{_fmt(sampler['length_diff_before'])} → {_fmt(sampler.get('length_diff_after'))}", "")
    if "margin" in sampler:
        table.add_row("", "confidence margin", _fmt(sampler["margin"]), "")
    review = summary.get("review") or {}
    if review.get("reviewed"):
        table.add_row("review", f"reviewed (kept / flipped / dropped {review['kept']} / {review['flipped']} / "
                      f"{review['dropped']})", _fmt(review["reviewed"]), "")
        table.add_row("", "agreement with the judge", _fmt(review["agreement"]), "")
    table.add_row("train", f"trainer: {summary['trainer'] or '-'}", "", _fmt(wall.get("train")))
    for section in ("sft", "reward_model", "train"):
        for label, value in _metric_rows(summary[section]):
            table.add_row("", f"{section}: {label}" if section != "train" else label, value, "")
    for stage, served in summary.get("serving", {}).items():
        table.add_row("vLLM", f"{stage}: prefix-cache hit rate", _fmt(served.get("prefix_cache_hit_rate")), "")
        table.add_row("", f"{stage}: generated tokens/s", _fmt(served.get("generated_tokens_per_s")), "")
    out.print(table)


def main() -> None:  # pragma: no cover - `python -m loop.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
