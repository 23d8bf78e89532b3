"""The run lease: at most one process works on a run at a time, and everyone can see who it is.

The lease is a row in the run's database (`run_leases`: run, token, host, pid, started_at, heartbeat). Every
change is a compare-and-set in SQL: a row is taken only if it is absent, or if it still holds exactly the token
and heartbeat that were read and judged stale. On the same host a holder is stale exactly when its process is gone
(or its pid now names a newer process), so a run killed with `kill -9` is resumed at once; on another host, when its
heartbeat is older than `stale_after_s`. The holder
proves it still owns the run inside each transaction that records work (`fence`), so a holder that lost its
lease can never commit over the new holder's work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loop.store.models import RunLease
from loop.store.session import Store, database_problem
from policies.processes import pid_alive, process_started_at

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
"""For holders on other hosts, whose processes cannot be checked from here."""
CLOCK_TICK_SLACK_S = 1.0
"""Process start times are known to the boot time's whole second."""


class LeaseHeld(RuntimeError):
    """Another live process holds the run."""


class LeaseLost(RuntimeError):
    """This process's lease was taken over (it was judged stale): its work must not be recorded."""


def describe(row: RunLease) -> str:
    since = row.started_at.replace(tzinfo=UTC) if row.started_at.tzinfo is None else row.started_at
    age = time.time() - row.heartbeat
    return (f"pid {row.pid} on {row.host}, since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
            f"last heartbeat {age:.0f} s ago")


@dataclass
class Lease:
    store: Store
    run: str
    token: str
    host: str
    pid: int
    heartbeat_s: float = HEARTBEAT_S
    lost: bool = False
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def heartbeat(self) -> None:
        """Prove liveness; raises LeaseLost if another process has taken the run over."""
        with self.store.session() as session:
            self.fence(session)

    def fence(self, session: Session) -> None:
        """Beat inside a transaction that records work: it fails (and rolls back) if the lease is no longer ours.

        An UPDATE, not a read: it takes the write lock (SQLite) or the row lock (PostgreSQL) first, so no
        take-over can slip in between this check and the transaction's commit.
        """
        changed = session.execute(update(RunLease).where(RunLease.run == self.run, RunLease.token == self.token)
                                  .values(heartbeat=time.time())).rowcount
        if changed != 1:
            self.lost = True
            raise LeaseLost(f"the lease on run {self.run!r} was taken over by another process; "
                            "this process's work was not recorded")

    def release(self) -> None:
        self.stop_heartbeats()
        with self.store.session() as session:
            session.execute(delete(RunLease).where(RunLease.run == self.run, RunLease.token == self.token))

    def start_heartbeats(self) -> None:
        """Beat every `heartbeat_s` in a daemon thread until released."""
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.heartbeat()
                except LeaseLost as exc:
                    log.error("%s", exc)
                    return
                except Exception as exc:  # a busy or briefly unreachable database: the next beat retries
                    log.warning("lease heartbeat failed: %s", database_problem(exc))

        self._thread = threading.Thread(target=beat, name=f"lease-{self.run}", daemon=True)
        self._thread.start()

    def stop_heartbeats(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self._stop = None

    def __enter__(self) -> Lease:
        self.start_heartbeats()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _is_stale(row: RunLease, host: str, stale_after_s: float, now: float) -> bool:
    """On this host the holder's process tells for sure: gone, or a newer process that reuses its id. A live holder
    is never stale here, even if stopped or slow. Another host's holder is stale when its heartbeat is old."""
    if row.host != host:
        return now - row.heartbeat > stale_after_s
    if not pid_alive(row.pid):
        return True
    started = process_started_at(row.pid)
    acquired = row.started_at.replace(tzinfo=UTC).timestamp() if row.started_at.tzinfo is None \
        else row.started_at.timestamp()
    return started is not None and started > acquired + CLOCK_TICK_SLACK_S


def acquire(store: Store, run: str, *, stale_after_s: float = STALE_AFTER_S,
            heartbeat_s: float = HEARTBEAT_S) -> Lease:
    """Take the run's lease: a new row, or a stale holder's row by compare-and-set; raises LeaseHeld otherwise."""
    host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
    values = {"token": token, "host": host, "pid": pid, "started_at": datetime.now(UTC).replace(tzinfo=None)}
    lease = Lease(store, run, token, host, pid, heartbeat_s)
    try:
        with store.session() as session:
            session.execute(insert(RunLease).values(run=run, heartbeat=time.time(), **values))
        return lease
    except IntegrityError:
        pass  # someone holds (or held) it: look at the holder
    with store.session() as session:
        row = session.get(RunLease, run)
        if row is None:  # released between our insert and this read: try once more from the start
            return acquire(store, run, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)
        if not _is_stale(row, host, stale_after_s, time.time()):
            raise LeaseHeld(f"run {run!r} is in use by {describe(row)}; wait for it to finish or stop it first")
        holder = describe(row)
        taken = session.execute(
            update(RunLease).where(RunLease.run == run, RunLease.token == row.token,
                                   RunLease.heartbeat == row.heartbeat)
            .values(heartbeat=time.time(), **values)).rowcount
    if taken != 1:
        raise LeaseHeld(f"run {run!r} was just taken over by another process")
    log.info("took over the lease on run %r from a holder that is gone (%s)", run, holder)
    return lease


def holder_gone(row: RunLease) -> bool:
    """Whether the lease's holder is gone (its process, or its heartbeat from another host), as `acquire` judges
    it: for readers that show who works on a run."""
    return _is_stale(row, socket.gethostname(), STALE_AFTER_S, time.time())
