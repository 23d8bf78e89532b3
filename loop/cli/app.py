"""The `cai` command line."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


FAILURES = logging.getLogger("cai.failures")
"""The line each failure leaves in cai.log (stderr gets it from `_report`, not from the console handler)."""


class _Options:
    debug = False


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so the same clean-up runs (trainers stopped,
    the lease released) and the same line is printed."""


class _RunLog(logging.FileHandler):
    """RUN_DIR/cai.log, written only once the run folder exists: a failed start never creates the folder."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / "cai.log", delay=True)
        self.run_dir = run_dir

    def emit(self, record: logging.LogRecord) -> None:
        if self.run_dir.is_dir():
            super().emit(record)


def _setup_logging(run_dir: Path | None) -> None:
    terminal = RichHandler(console=console, level=logging.WARNING, show_path=False)
    terminal.addFilter(lambda record: record.name != FAILURES.name)
    handlers: list[logging.Handler] = [terminal]
    if run_dir is not None:
        file = _RunLog(run_dir)
        file.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"))
        file.setLevel(logging.INFO)
        handlers.append(file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _report(message: str, code: int, exc: BaseException | None = None) -> NoReturn:
    """The failure's line(s) on stderr and in cai.log, the traceback only with --debug; exit with `code`."""
    for line in message.splitlines() or [""]:
        console.print("[bold red]error:[/]", escape(line), highlight=False, soft_wrap=True)
    FAILURES.error("%s", message, exc_info=exc if _Options.debug else None)
    if _Options.debug and exc is not None:
        console.print("".join(traceback.format_exception(exc)), highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(code=code)


def _fail(message: str) -> NoReturn:
    _report(message, 2)


def _loaded(dotted: str) -> type[BaseException] | tuple[()]:
    """An exception class, if its module is loaded (otherwise nothing can have raised it): classifying a failure
    must not import torch."""
    module, name = dotted.rsplit(".", 1)
    return getattr(sys.modules[module], name) if module in sys.modules else ()


BAD_INPUT = ("loop.config.ConfigError", "constitution.loader.ConstitutionError", "loop.prompts.PromptFileError",
             "policies.models.ModelNotFoundError", "loop.pipeline.inputs.InputsChanged",
             "loop.operate.promotion.RunHalted", "loop.service.broker.BrokerURLError")
SELF_EXPLAINING = ("loop.store.lease.LeaseHeld", "loop.store.lease.LeaseLost",
                   "policies.serving.vllm_client.ServerError", "loop.service.broker.BrokerUnreachable",
                   "loop.service.controller.ShardFailed")


def _classify(exc: Exception, position: Any) -> tuple[str, int]:
    """The line and exit code of a failure: 2 for bad input, 1 for anything else."""
    refused = _loaded("loop.store.database.DatabaseRefused")
    if refused and isinstance(exc, refused):
        return str(exc), 2 if exc.bad_input else 1
    if isinstance(exc, tuple(_loaded(name) for name in BAD_INPUT)):
        return str(exc), 2
    if isinstance(exc, tuple(_loaded(name) for name in SELF_EXPLAINING)):
        return str(exc), 1
    training_failed = _loaded("policies.training.launcher.TrainingFailed")
    if training_failed and isinstance(exc, training_failed):
        FAILURES.info("last lines of the trainer's log:\n%s", "\n".join(exc.tail))
        where = f" in {position.describe()}" if position is not None else ""
        return f"training failed{where}: {exc}; run the same command again to retry", 1
    first = (str(exc).strip().splitlines() or [""])[0]
    hint = "" if _Options.debug else " (run with --debug for the traceback)"
    return f"{type(exc).__name__}: {first}{hint}", 1


@contextmanager
def _failures_reported(position: Any = None) -> Iterator[None]:
    """Every failure ends in one line and an exit code: 2 for bad input, 1 for a failure, 130/143 for Ctrl-C and
    SIGTERM (with where it stopped and that the same command resumes)."""
    try:
        yield
    except typer.Exit:
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        where = position.describe() if position is not None else "the command"
        _report(f"interrupted ({name}) during {where}; run the same command again to resume", code, exc)
    except Exception as exc:
        _report(*_classify(exc, position), exc)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", envvar="CAI_DEBUG",
                                        help="Show the traceback of a failure (also CAI_DEBUG=1).")] = False,
) -> None:
    _Options.debug = debug


@app.command()
def iterate(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML, e.g. configs/quickstart.yaml.")],
    run_dir: RunDir,
    allow_changed: Annotated[bool, typer.Option(
        "--allow-changed", help="Resume an unfinished iteration although its constitution or config changed "
        "(both are recorded).")] = False,
) -> None:
    """Run one iteration (or finish an interrupted one): generate, critique, revise, judge, train, evaluate,
    then the gates promote, reject or halt."""
    import signal

    from loop.progress import Position, RichReporter

    _setup_logging(run_dir)
    position = Position()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with _failures_reported(position):
            from loop.config import load_run_config
            from loop.pipeline.iteration import run_iteration
            from policies.runtime import quiet_model_libraries

            quiet_model_libraries()
            summary = run_iteration(load_run_config(config), run_dir, RichReporter(console),
                                    allow_changed=allow_changed, position=position)
    finally:
        signal.signal(signal.SIGTERM, previous)
    render_summary(summary)
    console.print(f"run directory: {run_dir}  (database: {run_dir / 'cai.db'}, log: {run_dir / 'cai.log'})")


class _GracefulStop:
    """SIGTERM and SIGINT ask a daemon to stop at its next look at the database; a second one stops it at once."""

    def __init__(self) -> None:
        import threading

        self.event = threading.Event()
        self.signal_name: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        import signal

        if self.event.is_set():
            if signum == signal.SIGTERM:
                raise Terminated()
            raise KeyboardInterrupt()
        self.signal_name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        self.event.set()
        console.print(f"{self.signal_name}: stopping (again to stop at once)", highlight=False)

    @contextmanager
    def installed(self) -> Iterator[_GracefulStop]:
        import signal

        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@app.command("run")
def run_service(
    config: Annotated[Path, typer.Option("--config", help="Run config YAML, e.g. configs/quickstart.yaml.")],
    run_dir: RunDir,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", min=1, help="Stop after this many iterations (default: run until stopped).")] = None,
) -> None:
    """The service: run iterations continuously, each stage as shards for `cai worker` processes (with
    CAI_BROKER_URL; without it, one process does everything). Obeys `cai pause|resume|stop`; SIGTERM or Ctrl-C
    stops it gracefully, and the same command resumes."""
    from loop.progress import Position

    _setup_logging(run_dir)
    position = Position()
    with _GracefulStop().installed() as stop, _failures_reported(position):
        from loop.config import load_run_config
        from loop.service.broker import make_broker
        from loop.service.controller import Controller
        from policies.runtime import quiet_model_libraries

        quiet_model_libraries()
        run_config = load_run_config(config)
        broker = make_broker()
        try:
            controller = Controller(run_config, run_dir, broker, stop.event, position,
                                    on_iteration=render_summary)
            finished = controller.run(iterations)
        finally:
            broker.close()
    if controller.stopped_by == "signal":
        code = 143 if stop.signal_name == "SIGTERM" else 130
        _report(f"stopped ({stop.signal_name}) during {position.describe()}; run the same command again to resume",
                code)
    how = " (stopped by an operator)" if controller.stopped_by == "operator" else ""
    console.print(f"{finished} iteration(s) finished{how}; run directory: {run_dir}", highlight=False)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to work on: infer, cpu, train.")] = "infer,cpu",
    processes: Annotated[int, typer.Option(min=1, help="Worker processes (each loads its model once).")] = 1,
) -> None:
    """A worker of the service: takes shards from the broker at CAI_BROKER_URL, keeps its model loaded between
    them. SIGTERM or Ctrl-C stops it; a shard it was working on is handed out again."""
    import subprocess
    import time

    from loop.service.broker import QUEUES, broker_url

    _setup_logging(None)
    logging.getLogger("loop").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO)
    chosen = {q.strip() for q in queues.split(",") if q.strip()}
    unknown = sorted(chosen - set(QUEUES))
    if not chosen or unknown:
        _fail(f"--queues: unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(QUEUES)}")
    if broker_url() is None:
        _fail("cai worker needs CAI_BROKER_URL (redis://HOST:PORT/DB); without it `cai run` works alone")
    with _GracefulStop().installed() as stop:
        if processes > 1:  # one child per process, restarted if it dies
            command = [sys.executable, "-m", "loop.cli", "worker", "--queues", ",".join(sorted(chosen))]
            children = [subprocess.Popen(command) for _ in range(processes)]
            while not stop.event.wait(1.0):
                for i, child in enumerate(children):
                    if child.poll() is not None:
                        console.print(f"worker process {child.pid} exited ({child.returncode}); starting another")
                        children[i] = subprocess.Popen(command)
            for child in children:
                child.terminate()
            deadline = time.monotonic() + 30
            for child in children:
                try:
                    child.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
            return
        with _failures_reported():
            from loop.service.broker import make_broker
            from loop.service.worker import runner
            from policies.runtime import quiet_model_libraries

            quiet_model_libraries()
            broker = make_broker()
            consumer = broker.worker(chosen)
            consumer.start()
            console.print(f"worker {__import__('os').getpid()} on {', '.join(sorted(chosen))}", highlight=False)
            try:
                while not stop.event.wait(1.0):
                    pass
            finally:
                consumer.stop(timeout=10_000)
                runner().close()
                broker.close()


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
    """Summarise an iteration of a run from its database (reads only: creates and writes no file)."""
    from loop.operate.summary import iteration_summary, latest_iteration
    from loop.store.database import open_run_store

    _setup_logging(None)
    with _failures_reported():
        store = open_run_store(run_dir, write=False)
        try:
            with store.session() as session:
                found = latest_iteration(session, iteration)
                if found is None:
                    _fail(f"no iteration {iteration if iteration is not None else ''} in {run_dir}".replace("  ", " "))
                summary = iteration_summary(session, found)
        finally:
            store.dispose()
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        render_summary(summary)


def _constitution_files(paths: list[Path]) -> list[Path]:
    files = [f for p in paths for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    if not files:
        typer.echo("error: no YAML files found in " + ", ".join(map(str, paths)))
        raise typer.Exit(code=1)
    return files


def _load_or_exit(path: str | Path):
    """A resolved constitution, or its problems printed one a line and exit code 1."""
    from constitution import check_constitution

    checked = check_constitution(path, lint=False)
    if checked.constitution is None:
        for problem in checked.errors:
            typer.echo(str(problem))
        raise typer.Exit(code=1)
    return checked


@principles_app.command("check")
def principles_check(
    paths: Annotated[list[Path], typer.Argument(help="YAML files or folders of them.")],
    strict: Annotated[bool, typer.Option("--strict", help="Exit with 2 when there are warnings.")] = False,
) -> None:
    """Validate principle files: FILE:LINE:COLUMN: error|warning: FIELD: PROBLEM (hint: ...).

    Exit code 0 when usable, 1 on errors, 2 on warnings with --strict.
    """
    from constitution import check_constitution

    errors = warnings = 0
    for file in _constitution_files(paths):
        checked = check_constitution(file)
        for problem in checked.problems:
            typer.echo(str(problem))
        errors += len(checked.errors)
        warnings += len(checked.warnings)
        if checked.constitution is not None:
            c = checked.constitution
            typer.echo(f"{file}: ok: {len(c.principles)} principles from {len(set(checked.files))} file(s), "
                       f"hash {c.content_hash}" + (f", {len(checked.warnings)} warning(s)" if checked.warnings else ""))
    if errors:
        raise typer.Exit(code=1)
    if warnings and strict:
        raise typer.Exit(code=2)


@principles_app.command("show")
def principles_show(
    path: Annotated[str, typer.Argument(help="A constitution file, or a shipped name such as `default`.")],
    principle_id: Annotated[str | None, typer.Option("--id", help="Only this principle.")] = None,
) -> None:
    """The resolved constitution (after extends/include/remove), each template rendered on its examples."""
    from constitution.loader import render_on, sample_inputs
    from constitution.templates import TEMPLATE_FIELDS

    checked = _load_or_exit(path)
    c = checked.constitution
    principles = c.principles
    if principle_id is not None:
        principles = [p for p in principles if p.id == principle_id]
        if not principles:
            typer.echo(f"error: no principle {principle_id!r} in {path}; ids: " + ", ".join(p.id for p in c.principles))
            raise typer.Exit(code=1)
    total = sum(p.weight for p in c.principles)
    typer.echo(f"{c.name} (hash {c.content_hash}): {len(c.principles)} principles from "
               + ", ".join(dict.fromkeys(str(f) for f in checked.files)))
    if c.description:
        typer.echo(c.description)
    for name, text in c.snippets.items():
        typer.echo(f"snippet {name}: {text}")
    for p in principles:
        origin = checked.origins[p.id]
        typer.echo(f"\n[{p.id}] {p.title}".rstrip() + f"  ({origin.source.path}:{origin.line})")
        if p.description:
            typer.echo(f"  {p.description}")
        typer.echo(f"  tags: {', '.join(p.tags) or '-'}; applies to: {', '.join(p.applies_to) or 'all prompts'}; "
                   f"weight {p.weight:g} ({p.weight / total:.1%} of draws)")
        for number, inputs in enumerate(sample_inputs(p), start=1):
            label = f"example {number}" if p.examples else "built-in sample"
            typer.echo(f"  -- {label}: prompt {inputs['prompt']!r}, response {inputs['response']!r}")
            for field in TEMPLATE_FIELDS:
                if getattr(p, field) is None:
                    continue
                typer.echo(f"    {field}: {render_on(p, field, inputs)}")
            if p.examples:
                example = p.examples[number - 1]
                typer.echo(f"    critique: {example.critique}\n    revision: {example.revision}")


@principles_app.command("diff")
def principles_diff(
    old: Annotated[str, typer.Argument(help="The constitution before (a file or a shipped name).")],
    new: Annotated[str, typer.Argument(help="The constitution after.")],
) -> None:
    """Added, removed and changed principles, and whether the content hash changes."""
    from constitution.diff import diff_constitutions

    d = diff_constitutions(_load_or_exit(old).constitution, _load_or_exit(new).constitution)
    typer.echo(f"hash {d.old_hash} -> {d.new_hash}: " + ("changes" if d.hash_changes else "unchanged"))
    def shown(value: object) -> str:
        return "(not set)" if value is None else repr(value)

    for change in d.other:
        typer.echo(f"~ {change.field}: {shown(change.old)} -> {shown(change.new)}")
    for pid in d.added:
        typer.echo(f"+ {pid}")
    for pid in d.removed:
        typer.echo(f"- {pid}")
    for pid, changes in d.changed.items():
        typer.echo(f"~ {pid}: " + ", ".join(c.field for c in changes))
        for change in changes:
            typer.echo(f"    {change.field}:\n      - {shown(change.old)}\n      + {shown(change.new)}")
    if d.reordered:
        typer.echo("order changed (sampling draws change with it)")


@principles_app.command("try")
def principles_try(
    principle_id: Annotated[str, typer.Argument(help="The principle's id.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The user request to try it on.")],
    config: Annotated[Path | None, typer.Option("--config", help="Run config YAML (model, generation, critique, "
                                                 "judge); default: SmolLM2 on transformers.")] = None,
    constitution: Annotated[str | None, typer.Option(
        "--constitution", help="A constitution file or shipped name (default: the config's).")] = None,
    response: Annotated[str | None, typer.Option(
        "--response", help="Critique this response instead of generating one.")] = None,
) -> None:
    """Render and run one critique -> revision under a principle, and the judge's verdict on the pair."""
    from loop.config import ConfigError
    from loop.pipeline import principle_try
    from policies.models import ModelNotFoundError
    from policies.serving.vllm_client import ServerError

    try:
        run_config = principle_try.config_for_try(config)
    except ConfigError as exc:
        _fail(str(exc))
    c = _load_or_exit(constitution or run_config.constitution).constitution
    try:
        principle = c.get(principle_id)
    except KeyError:
        typer.echo(f"error: no principle {principle_id!r} in {c.name}; ids: " + ", ".join(p.id for p in c.principles))
        raise typer.Exit(code=1) from None
    try:
        policy, judge_model = principle_try.engines_for(run_config)
        principle_try.try_principle(principle, prompt, policy, judge_model, run_config, typer.echo,
                                    response=response)
    except (ModelNotFoundError, ServerError) as exc:
        _fail(str(exc))


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
    from loop.store.database import open_run_store

    if not (run_dir / "cai.db").is_file():
        _fail(f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`")
    return open_run_store(run_dir, write=True)


@review_app.command("list")
def review_list(
    run_dir: RunDir,
    iteration: Annotated[int | None, typer.Option(help="Only this iteration's pairs.")] = None,
    width: Annotated[int, typer.Option(help="Characters of each text shown.")] = 60,
) -> None:
    """The pairs with their AI label and latest review, and the reviewers' agreement with the judge."""
    from sqlalchemy import select

    from loop.operate.summary import latest_reviews, review_agreement
    from loop.store import Iteration, Pair

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

    from loop.operate.review import ReviewError, record_review

    store = _open_store(run_dir)
    try:
        record_review(store, pair_id, verdict, reviewer=reviewer or getpass.getuser(), note=note)
    except ReviewError as exc:
        _fail(f"{exc}; `cai review list --run-dir {run_dir}` shows them")
    finally:
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
    from loop.operate.export import pair_records, write_pairs

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
             f"constitution {' → '.join(summary.get('constitution_hashes') or [summary['constitution_hash']])}")
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
    evaluation, gate = summary.get("evaluation"), summary.get("gate")
    if evaluation:
        table.add_row("evaluate", f"{evaluation['policy']} vs {evaluation['previous']} "
                      f"({evaluation['refusal_classifier']})", "", _fmt(wall.get("evaluate")))
        from loop.operate.summary import HEADLINE_METRICS

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


def _open_run(run_dir: Path, *, write: bool):
    """The run's checked store (`loop.store.database`); a folder with no run is refused, read-only opens write
    nothing."""
    from loop.store.database import NoRun, open_run_store

    if write and not (run_dir / "cai.db").is_file():
        raise NoRun(f"no run in {run_dir} (no cai.db); start one with `cai iterate --config FILE --run-dir {run_dir}`")
    return open_run_store(run_dir, write=write)


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

    from constitution import load_constitution
    from loop.config import load_run_config
    from loop.evaluation.harness import Evaluator
    from loop.operate.promotion import evaluation_metrics
    from loop.progress import RichReporter
    from loop.store import Evaluation, Policy, Run
    from loop.store.lease import acquire
    from policies.runtime import configure_threads, quiet_model_libraries

    _setup_logging(run_dir)
    with _failures_reported():
        store = _open_run(run_dir, write=True)
        try:
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
            if found is None:
                config = load_run_config(run_dir / "config.yaml")
                configure_threads(config.threads)
                # Measuring writes answers and metrics: one process per run, as for `cai iterate`.
                with acquire(store, run.name):
                    evaluator = Evaluator.for_run(config, store, run_dir, run.id,
                                                  load_constitution(config.constitution), RichReporter(console))
                    found_id = evaluator.evaluate(version, other)
            else:
                found_id = found.id
            with store.session() as session:
                evaluation = session.get(Evaluation, found_id)
                result = {"policy": f"v{version}", "against": f"v{other}", "evaluation_id": evaluation.id,
                          "iteration_id": evaluation.iteration_id,
                          "refusal_classifier": evaluation.refusal_classifier,
                          "metrics": evaluation_metrics(session, evaluation.id)}
        finally:
            store.dispose()
    if as_json:
        out.print_json(json.dumps(result))
    else:
        render_evaluation(result)


Operator = Annotated[str | None, typer.Option("--by", help="Who asks (default: the login name).")]
Why = Annotated[str, typer.Option("--note", "--reason", help="Why: recorded with the request.")]


def _operate(run_dir: Path, action: str, by: str | None, note: str, to: int | None = None) -> None:
    """Record an operator's request (`loop.operate.control`) and print what came of it."""
    import getpass

    from loop.operate.control import ControlError, operate

    _setup_logging(run_dir)
    with _failures_reported():
        store = _open_run(run_dir, write=True)
        try:
            text = operate(store, action, by=by or getpass.getuser(), note=note, to=to)
        except ControlError as exc:
            _fail(str(exc))
        finally:
            store.dispose()
    out.print(text, highlight=False)


@app.command()
def rollback(
    run_dir: RunDir,
    to: Annotated[str | None, typer.Option("--to", help="The policy to make current (default: the one the "
                                                        "current policy was trained from).")] = None,
    note: Why = "",
    by: Operator = None,
) -> None:
    """Move the current-policy pointer back (and resume a halted run); the move and its reason are recorded.
    While a daemon works on the run, the rollback is queued and applied after its current iteration."""
    _operate(run_dir, "rollback", by, note, None if to is None else _version(to))


@app.command()
def promote(
    run_dir: RunDir,
    policy: Annotated[str, typer.Argument(help="The policy to make current (N or vN), whatever the gates said.")],
    note: Why = "",
    by: Operator = None,
) -> None:
    """Make a recorded policy current against the gates' decision (and resume a halted run); recorded."""
    _operate(run_dir, "promote", by, note, _version(policy))


@app.command()
def pause(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Pause the run's daemon after the stage it is in (it stays paused across restarts until resumed)."""
    _operate(run_dir, "pause", by, note)


@app.command()
def resume(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Resume a paused run."""
    _operate(run_dir, "resume", by, note)


@app.command()
def stop(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Ask the run's daemon to stop after the stage it is in."""
    _operate(run_dir, "stop", by, note)


@app.command()
def metrics(run_dir: RunDir) -> None:
    """Print the run's evaluation metrics and gate outcomes in the Prometheus text format."""
    from loop.operate.metrics import exposition

    with _failures_reported():
        store = _open_run(run_dir, write=False)
        try:
            typer.echo(exposition(store), nl=False)
        finally:
            store.dispose()


@app.command()
def dashboard(
    run_dir: RunDir,
    host: Annotated[str, typer.Option(help="Address to listen on (only this machine by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(
        envvar="CAI_DASHBOARD_TOKEN", show_envvar=True,
        help="The operator token: with it, operators who present it (the login page, or `Authorization: Bearer "
             "TOKEN`) may review pairs, pause, resume, promote and roll back. Without one the dashboard is "
             "read-only. Prefer the environment variable: an option shows in the process list.")] = None,
) -> None:
    """Serve the operator dashboard of a run: overview, iterations, samples, principles, review queue, controls
    and a JSON API (its OpenAPI document at /openapi.json)."""
    _setup_logging(None)
    with _failures_reported():
        import uvicorn

        from loop.dashboard.app import LOOPBACK_HOSTS, create_app

        # Bound to this machine only, it answers only to this machine's names (no DNS rebinding).
        local = host in LOOPBACK_HOSTS
        dashboard_app = create_app(run_dir, token=token, allowed_hosts=LOOPBACK_HOSTS if local else None)
        mode = "operators with the token may review and control" if token else "read-only (no operator token)"
        console.print(f"dashboard of {run_dir} on http://{host}:{port}/ ({mode}); Ctrl-C stops it", highlight=False)
        try:
            uvicorn.run(dashboard_app, host=host, port=port, log_level="warning")
        finally:
            dashboard_app.state.dashboard.reader.dispose()  # the dashboard opened it: no store was passed


def main() -> None:  # pragma: no cover - `python -m loop.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
