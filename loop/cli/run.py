"""Running the loop: `cai iterate` (one iteration in this process), `cai run` (the service's controller) and
`cai worker` (its shard workers).

The pipeline, the controller and the workers load torch, so each command imports them only once it runs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from loop.cli.errors import Terminated, fail, failures_reported, raise_terminated, report
from loop.cli.options import Config, RunDir
from loop.cli.output import console, setup_logging
from loop.cli.render import render_summary
from loop.config import load_run_config
from loop.progress import Position, RichReporter
from loop.service.broker import QUEUES, broker_url, make_broker
from loop.service.supervisor import supervise


def iterate(
    config: Config,
    run_dir: RunDir,
    allow_changed: Annotated[bool, typer.Option(
        "--allow-changed", help="Resume an unfinished iteration although its constitution or config changed "
        "(both are recorded).")] = False,
) -> None:
    """Run one iteration (or finish an interrupted one): generate, critique, revise, judge, train, evaluate,
    then the gates promote, reject or halt."""
    setup_logging(run_dir)
    position = Position()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with failures_reported(position):
            from loop.pipeline.iteration import run_iteration
            from policies.runtime import quiet_model_libraries

            quiet_model_libraries()
            summary = run_iteration(load_run_config(config), run_dir, RichReporter(console),
                                    allow_changed=allow_changed, position=position)
    finally:
        signal.signal(signal.SIGTERM, previous)
    render_summary(summary)
    console.print(f"run directory: {run_dir}  (database: {run_dir / 'cai.db'}, log: {run_dir / 'cai.log'})")


class GracefulStop:
    """SIGTERM and SIGINT ask a daemon to stop at its next look at the database; a second one stops it at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            if signum == signal.SIGTERM:
                raise Terminated()
            raise KeyboardInterrupt()
        self.signal_name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        self.event.set()
        console.print(f"{self.signal_name}: stopping (again to stop at once)", highlight=False)

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def run_service(
    config: Config,
    run_dir: RunDir,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", min=1, help="Stop after this many iterations (default: run until stopped).")] = None,
) -> None:
    """The service: run iterations continuously, each stage as shards for `cai worker` processes (with
    CAI_BROKER_URL; without it, one process does everything). Obeys `cai pause|resume|stop`; SIGTERM or Ctrl-C
    stops it gracefully, and the same command resumes."""
    setup_logging(run_dir)
    position = Position()
    with GracefulStop().installed() as stop, failures_reported(position):
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
        report(f"stopped ({stop.signal_name}) during {position.describe()}; run the same command again to resume",
               code)
    how = " (stopped by an operator)" if controller.stopped_by == "operator" else ""
    console.print(f"{finished} iteration(s) finished{how}; run directory: {run_dir}", highlight=False)


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to work on: infer, cpu, train.")] = "infer,cpu",
    processes: Annotated[int, typer.Option(min=1, help="Worker processes (each loads its model once).")] = 1,
) -> None:
    """A worker of the service: takes shards from the broker at CAI_BROKER_URL, keeps its model loaded between
    them. SIGTERM or Ctrl-C stops it; a shard it was working on is handed out again."""
    setup_logging(None)
    logging.getLogger("loop").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO)
    chosen = {q.strip() for q in queues.split(",") if q.strip()}
    unknown = sorted(chosen - set(QUEUES))
    if not chosen or unknown:
        fail(f"--queues: unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(QUEUES)}")
    if broker_url() is None:
        fail("cai worker needs CAI_BROKER_URL (redis://HOST:PORT/DB); without it `cai run` works alone")
    with GracefulStop().installed() as stop:
        if processes > 1:
            command = [sys.executable, "-m", "loop.cli", "worker", "--queues", ",".join(sorted(chosen))]
            supervise(command, processes, stop.event, say=console.print)
            return
        with failures_reported():
            _consume(chosen, stop.event)


def _consume(queues: set[str], stop: threading.Event) -> None:
    """This process as one worker: its model stays loaded between shards until `stop`."""
    from loop.service.worker import runner
    from policies.runtime import quiet_model_libraries

    quiet_model_libraries()
    broker = make_broker()
    consumer = broker.worker(queues)
    consumer.start()
    console.print(f"worker {os.getpid()} on {', '.join(sorted(queues))}", highlight=False)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        consumer.stop(timeout=10_000)
        runner().close()
        broker.close()
