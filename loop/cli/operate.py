"""An operator's commands: `cai pause|resume|stop|promote|rollback` (requests recorded in the run's database,
`loop.operate.control`) and `cai eval` (measure a policy, `loop.operate.evaluate`)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer

from loop.cli.errors import fail, failures_reported
from loop.cli.options import RunDir, open_run, policy_version
from loop.cli.output import console, out, setup_logging
from loop.cli.render import render_evaluation, show
from loop.operate.control import ControlError, operate
from loop.operate.evaluate import evaluate_policy
from loop.progress import RichReporter

Operator = Annotated[str | None, typer.Option("--by", help="Who asks (default: the login name).")]
Why = Annotated[str, typer.Option("--note", "--reason", help="Why: recorded with the request.")]


def eval_policy(
    run_dir: RunDir,
    policy: Annotated[str, typer.Option("--policy", help="The policy to measure (N or vN).")],
    against: Annotated[str | None, typer.Option("--against", help="The policy to compare with (default: the one "
                                                                  "it was trained from).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    recompute: Annotated[bool, typer.Option(help="Measure again even if this pair was measured before.")] = False,
) -> None:
    """Measure a policy on the held-out sets against another and the base; print the metrics."""
    # Loads torch: only `cai eval` itself may.
    from policies.runtime import quiet_model_libraries

    setup_logging(run_dir)
    with failures_reported():
        store = open_run(run_dir, write=True)
        try:
            quiet_model_libraries()
            version = policy_version(policy)
            other = policy_version(against) if against is not None else None
            result = evaluate_policy(store, run_dir, version, other, recompute=recompute,
                                     reporter=RichReporter(console))
        finally:
            store.dispose()
    show(result, as_json=as_json, render=render_evaluation)


def _operate(run_dir: Path, action: str, by: str | None, note: str, to: int | None = None) -> None:
    """Record an operator's request (`loop.operate.control`) and print what came of it."""
    setup_logging(run_dir)
    with failures_reported():
        store = open_run(run_dir, write=True)
        try:
            text = operate(store, action, by=by or getpass.getuser(), note=note, to=to)
        except ControlError as exc:
            fail(str(exc))
        finally:
            store.dispose()
    out.print(text, highlight=False)


def rollback(
    run_dir: RunDir,
    to: Annotated[str | None, typer.Option("--to", help="The policy to make current (default: the one the "
                                                        "current policy was trained from).")] = None,
    note: Why = "",
    by: Operator = None,
) -> None:
    """Move the current-policy pointer back (and resume a halted run); the move and its reason are recorded.
    While a daemon works on the run, the rollback is queued and applied after its current iteration."""
    _operate(run_dir, "rollback", by, note, None if to is None else policy_version(to))


def promote(
    run_dir: RunDir,
    policy: Annotated[str, typer.Argument(help="The policy to make current (N or vN), whatever the gates said.")],
    note: Why = "",
    by: Operator = None,
) -> None:
    """Make a recorded policy current against the gates' decision (and resume a halted run); recorded."""
    _operate(run_dir, "promote", by, note, policy_version(policy))


def pause(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Pause the run's daemon after the stage it is in (it stays paused across restarts until resumed)."""
    _operate(run_dir, "pause", by, note)


def resume(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Resume a paused run."""
    _operate(run_dir, "resume", by, note)


def stop(run_dir: RunDir, note: Why = "", by: Operator = None) -> None:
    """Ask the run's daemon to stop after the stage it is in."""
    _operate(run_dir, "stop", by, note)
