"""How a command fails: one line on stderr and in cai.log, the traceback only with --debug, and an exit code
that says whose fault it was (2: bad input, 1: a failure, 130/143: Ctrl-C/SIGTERM).

The failures are classified by their type. Every module they come from is torch-free, so classifying a failure
(and so starting any command, `cai --help` included) never imports torch.
"""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.markup import escape

from constitution.loader import ConstitutionError
from loop.cli.output import FAILURES, console
from loop.config import ConfigError
from loop.operate.evaluate import UnknownPolicy
from loop.operate.export_policy import ExportRefused
from loop.operate.promotion import RunHalted
from loop.pipeline.inputs import InputsChanged
from loop.progress import Position
from loop.prompts import PromptFileError
from loop.service.broker import BrokerUnreachable, BrokerURLError, ShardFailed
from loop.store.database import DatabaseRefused
from loop.store.lease import LeaseHeld, LeaseLost
from loop.store.session import database_problem
from policies.models import ModelNotFoundError
from policies.serving.vllm_client import ServerError
from policies.training.launcher import TrainingFailed

BAD_INPUT: tuple[type[Exception], ...] = (ConfigError, ConstitutionError, PromptFileError, ModelNotFoundError,
                                          InputsChanged, RunHalted, BrokerURLError, UnknownPolicy, ExportRefused)
"""Failures the user fixes (exit code 2); their message says what to change."""
SELF_EXPLAINING: tuple[type[Exception], ...] = (LeaseHeld, LeaseLost, ServerError, BrokerUnreachable, ShardFailed)
"""Failures (exit code 1) whose message is the whole story: no exception name, no --debug hint."""


class Options:
    """The global options (`cai --debug`), set by the app's callback before any command runs."""

    debug = False


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so the same clean-up runs (trainers stopped,
    the lease released) and the same line is printed."""


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop like Ctrl-C does."""
    raise Terminated()


MAX_LINE_CHARS = 480


def shortened(line: str) -> str:
    """A line that echoes a huge value (a damaged file's megabyte string) cut in its middle, so it stays a line."""
    if len(line) <= MAX_LINE_CHARS:
        return line
    left_out = len(line) - MAX_LINE_CHARS
    return f"{line[:MAX_LINE_CHARS - 160]} … ({left_out} characters left out) … {line[-160:]}"


def report(message: str, code: int, exc: BaseException | None = None) -> NoReturn:
    """The failure's line(s) on stderr and in cai.log, the traceback only with --debug; exit with `code`."""
    message = "\n".join(shortened(line) for line in message.splitlines())
    for line in message.splitlines() or [""]:
        console.print("[bold red]error:[/]", escape(line), highlight=False, soft_wrap=True)
    if logging.getLogger().handlers:  # a command without a log would print the line a second time
        FAILURES.error("%s", message, exc_info=exc if Options.debug else None)
    if Options.debug and exc is not None:
        console.print("".join(traceback.format_exception(exc)), highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(code=code)


def fail(message: str) -> NoReturn:
    """Bad input: its line, exit code 2."""
    report(message, 2)


DISK_FULL = ("No space left on device", "database or disk is full", "Disk quota exceeded")
"""How a full disk reads in an OSError, in SQLite's error and in a trainer's last line."""


def disk_full(exc: BaseException) -> str | None:
    """What could not be written, if the failure or one it arose from is a full disk; else None. The first such
    failure in the chain says it: once the trainer fails on a full disk, the database's write fails too."""
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for exc in reversed(chain):
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {exc.filename}" if exc.filename else exc.strerror or str(exc)
        if isinstance(exc, TrainingFailed) and any(marker in str(exc) for marker in DISK_FULL):
            return f"the trainer could not write its checkpoint or adapter ({str(exc).split('; log: ')[0]})"
        if any(marker in str(exc) for marker in DISK_FULL):
            return database_problem(exc)
    return None


def classify(exc: Exception, position: Position | None) -> tuple[str, int]:
    """The line and exit code of a failure: 2 for bad input, 1 for anything else."""
    if isinstance(exc, DatabaseRefused):
        return str(exc), 2 if exc.bad_input else 1
    if isinstance(exc, ConstitutionError) and len(exc.problems) > 1:  # the first, so a failure stays one line
        return f"{exc.problems[0]} (and {len(exc.problems) - 1} more: `cai principles check FILE` lists them)", 2
    if isinstance(exc, BAD_INPUT):
        return str(exc), 2
    if isinstance(exc, SELF_EXPLAINING):
        return str(exc), 1
    if (full := disk_full(exc)) is not None:
        where = f" during {position.describe()}" if position is not None else ""
        return f"the disk is full{where}: {full}; free some space and run the same command again to resume", 1
    if isinstance(exc, TrainingFailed):
        FAILURES.info("last lines of the trainer's log:\n%s", "\n".join(exc.tail))
        where = f" in {position.describe()}" if position is not None else ""
        return f"training failed{where}: {exc}; run the same command again to retry", 1
    first = (str(exc).strip().splitlines() or [""])[0]
    hint = "" if Options.debug else " (run with --debug for the traceback)"
    return f"{type(exc).__name__}: {first}{hint}", 1


@contextmanager
def failures_reported(position: Position | None = None) -> Iterator[None]:
    """Every failure ends in one line and an exit code: 2 for bad input, 1 for a failure, 130/143 for Ctrl-C and
    SIGTERM (with where it stopped and that the same command resumes)."""
    try:
        yield
    except typer.Exit:
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        where = position.describe() if position is not None else "the command"
        report(f"interrupted ({name}) during {where}; run the same command again to resume", code, exc)
    except Exception as exc:
        report(*classify(exc, position), exc)
