"""The daemon's controller (`cai run`): runs iterations one after another, each stage as shards sent to workers.

It holds the run lease for its whole life (one controller per run; `cai iterate` on the same run is refused too).
For each stage it creates the shards' claim rows, sends a message per shard and watches the database until every
shard is done, re-sending shards that were never started (a lost message, a restarted broker) or whose worker's
claim expired (a killed worker): on start, and every `service.poll_s`. Between stages and iterations it obeys
the operator (`loop.operate.control`: pause, resume, stop, promote, rollback) and the gates (a halt waits for an
operator); between iterations it reloads the constitution, keeping the last good one when an edit is broken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from constitution import Constitution, load_constitution_or_last_good
from loop.config import ConfigError, RunConfig, save_run_config
from loop.operate import control
from loop.operate.promotion import RunHalted, ensure_not_halted
from loop.operate.summary import iteration_summary
from loop.pipeline.context import IterationContext
from loop.pipeline.inputs import record_constitution
from loop.pipeline.iteration import _engines, _finish, _run_name, open_iteration, validate_inputs
from loop.pipeline.stages import STAGES, Stage
from loop.progress import NullReporter, Position
from loop.service.broker import Broker, ShardFailed
from loop.service.worker import iteration_constitution
from loop.store import Iteration, ShardClaim, Store
from loop.store.database import open_run_store
from loop.store.lease import Lease, acquire
from loop.store.queries import latest_inputs, run_row
from loop.store.session import database_problem
from loop.store.shards import describe, done_shards, ensure_claims, shard_count
from policies.runtime import configure_threads

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopped(Exception):
    """A signal asked the controller to stop while it waited for the database."""


@dataclass
class Controller:
    config: RunConfig
    run_dir: Path
    broker: Broker
    stop: threading.Event = field(default_factory=threading.Event)
    """Set by SIGTERM/SIGINT: stop at the next look at the database, leaving in-flight shards to their claims."""
    position: Position = field(default_factory=Position)
    on_iteration: Any = None
    """Called with each finished iteration's summary."""
    run_name: str = ""
    stage_seconds: dict[tuple[int, str], float] = field(default_factory=dict)
    """(iteration, stage) → seconds from its first message sent to its last shard seen done."""
    stopped_by: str | None = None
    """Why `run` returned early: "operator" (`cai stop`) or "signal"; None when it ran its iterations."""

    def run(self, iterations: int | None) -> int:
        """Run `iterations` iterations (None: until stopped); returns how many finished."""
        configure_threads(self.config.threads)
        if self.broker.embedded and (problem := self.config.train.needs_workers("`cai run` without a broker")):
            raise ConfigError(problem)
        constitution = validate_inputs(self.config)
        store = open_run_store(self.run_dir, write=True)
        worker = None
        try:
            self.run_name = _run_name(store, self.run_dir)
            with acquire(store, self.run_name) as lease:
                save_run_config(self.config, self.run_dir / "config.yaml")
                if self.broker.embedded:  # the in-process broker's consumer: this process is its own worker
                    worker = self.broker.worker()
                    worker.start()
                finished = 0
                while iterations is None or finished < iterations:
                    try:
                        run_id = self._through_outages(lambda: self._run_id(store))
                        if run_id is not None and not self._may_go_on(store, lease, run_id,
                                                                      between_iterations=True):
                            break
                        constitution = self._constitution(constitution)
                        if not self._iteration(store, lease, constitution):
                            break
                    except Stopped:
                        break
                    finished += 1
                return finished
        finally:
            if worker is not None:
                worker.stop(timeout=10_000)
            store.dispose()

    def _run_id(self, store: Store) -> int | None:
        with store.session() as session:
            run = run_row(session)
            return run.id if run is not None else None

    def _constitution(self, last_good: Constitution) -> Constitution:
        """The constitution file as it is now, or the last good one when the edit is broken (the alarm: an error
        line in the log and on the terminal, every iteration until the file is fixed)."""
        constitution, problems = load_constitution_or_last_good(self.config.constitution, last_good)
        if problems:
            log.error("the edited constitution %s is broken; iterations go on with version %s: %s",
                      self.config.constitution, last_good.content_hash,
                      "; ".join(str(p) for p in problems[:3]))
        return constitution

    def _wait(self) -> bool:
        """Sleep one poll; False when a signal asked to stop."""
        if self.stop.wait(self.config.service.poll_s):
            self.stopped_by = self.stopped_by or "signal"
            return False
        return True

    def _may_go_on(self, store: Store, lease: Lease, run_id: int, *, between_iterations: bool) -> bool:
        """Obey the operator and the gates: wait while paused or halted; False to stop (acknowledged)."""
        said: str | None = None
        while True:
            state, halt = self._through_outages(lambda: self._look(store, lease, run_id, between_iterations))
            if state == "stopping":
                self.stopped_by = "operator"
                log.info("stopped by an operator (`cai stop`)")
                return False
            if state == "running" and halt is None:
                if said is not None:
                    log.info("resumed")
                return True
            why = "paused by an operator (`cai resume` to go on)" if state == "paused" else halt
            if why != said:
                log.warning("%s; waiting", why)
                said = why
            if not self._wait():
                return False

    @staticmethod
    def _look(store: Store, lease: Lease, run_id: int, between_iterations: bool) -> tuple[str, str | None]:
        """The run's state and halt (between iterations), after applying the operator's moves and acknowledging a
        stop, in one transaction."""
        with store.session() as session:
            lease.fence(session)
            if between_iterations:
                for move in control.apply_moves(session, run_id):
                    log.info("operator %s applied: %s", move.action, move.outcome)
            state = control.run_state(session, run_id)
            if state == "stopping":
                control.acknowledge_stop(session, run_id)
                return state, None
            halt = None
            if between_iterations:
                try:
                    ensure_not_halted(session, run_id)
                except RunHalted as exc:
                    halt = str(exc)
        return state, halt

    def _open(self, store: Store, constitution: Constitution) -> tuple[int, int, int, Constitution]:
        """The unfinished iteration with the constitution it began with, or a new one with `constitution`."""
        with store.session() as session:
            unfinished = session.scalar(select(Iteration).where(Iteration.status != "done")
                                        .order_by(Iteration.index.desc()))
            if unfinished is not None:
                recorded = latest_inputs(session, unfinished.id)
                constitution = iteration_constitution(
                    session, recorded.constitution_hash if recorded else unfinished.constitution_hash, self.config)
        record_constitution(store, constitution)
        run_id, iteration_id, index = open_iteration(store, self.config, self.run_dir, constitution.content_hash)
        return run_id, iteration_id, index, constitution

    def _iteration(self, store: Store, lease: Lease, constitution: Constitution) -> bool:
        run_id, iteration_id, index, constitution = self._through_outages(lambda: self._open(store, constitution))
        self.position.iteration = index
        ctx = IterationContext(config=self.config, store=store, run_dir=self.run_dir, run_id=run_id,
                               iteration_id=iteration_id, iteration_index=index, constitution=constitution,
                               engines=_engines(self.config, store, run_id, self.run_dir), reporter=NullReporter(),
                               fence=lease.fence)
        started = time.perf_counter()
        for stage in STAGES.values():
            self.position.stage = stage.name
            stage_started = time.perf_counter()
            if not self._stage(store, lease, iteration_id, index, stage):
                return False
            self.stage_seconds[(index, stage.name)] = time.perf_counter() - stage_started
            if not self._may_go_on(store, lease, run_id, between_iterations=False):
                return False
        self.position.stage = None
        self._through_outages(lambda: _finish(ctx))
        log.info("iteration %d finished in %.1f s", index, time.perf_counter() - started)
        if self.on_iteration is not None:
            with store.session() as session:
                self.on_iteration(iteration_summary(session, session.get(Iteration, iteration_id)))
        return True

    def _stage(self, store: Store, lease: Lease, iteration_id: int, index: int, stage: Stage) -> bool:
        """Send the stage's shards and wait until all are done; False when stopped first."""
        reported = -1
        while True:
            shards, done, due = self._through_outages(lambda: self._due(store, lease, iteration_id, index, stage))
            if len(done) != reported:
                log.info("stage %s of iteration %d: %d/%d shards done", stage.name, index, len(done), shards)
                reported = len(done)
            if len(done) == shards:
                return True
            self._send(store, stage, due)
            if not self._wait():
                return False

    def _due(self, store: Store, lease: Lease, iteration_id: int, index: int, stage: Stage) -> tuple[int, set, list]:
        """(shards, the done ones, the claims to send now) of a stage, in one look at the database."""
        service, now = self.config.service, time.time()
        with store.session() as session:
            lease.fence(session)
            shards = shard_count(session, iteration_id, stage.name, service.shard_size,
                                 by_samples=stage.sharded_by_samples,
                                 nodes=self.config.train.gang_nodes if stage.gang else 1)
            claims = ensure_claims(session, iteration_id, stage.name, shards)
            done = done_shards(session, iteration_id, stage.name)
            due = []
            for c in claims:
                if c.shard in done:
                    continue
                free = c.owner is None or c.expires_at < now
                if free and c.attempts >= service.max_attempts:
                    raise ShardFailed(f"{describe(stage.name, c.shard, shards, index)} failed {c.attempts} times; "
                                      f"last error: {c.error or 'its worker stopped'}")
                expired_unsent = c.owner is not None and c.expires_at < now and c.sent_at < c.expires_at
                if c.sent_at == 0 or expired_unsent or (free and now - c.sent_at > service.requeue_after_s):
                    due.append(c)
        return shards, done, due

    @staticmethod
    def _mark_sent(store: Store, claim_id: int) -> None:
        with store.session() as session:
            session.execute(update(ShardClaim).where(ShardClaim.id == claim_id).values(sent_at=time.time()))

    def _through_outages(self, work: Callable[[], T]) -> T:
        """`work()`, tried again every poll while the database is unreachable (a restart, a failover): in-flight
        shards are the workers' and their claims', so waiting loses nothing. Raises Stopped on a signal."""
        down_since = None
        while True:
            try:
                result = work()
            except OperationalError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("the database is unreachable (%s); trying again every %g s",
                                database_problem(exc), self.config.service.poll_s)
                if not self._wait():
                    raise Stopped() from None
                continue
            if down_since is not None:
                log.info("the database is back after %.0f s", time.monotonic() - down_since)
            return result

    def _send(self, store: Store, stage: Stage, due: list) -> None:
        """Send each due shard's message to its stage's queue; a broker that is down now is retried at the next
        poll."""
        for c in due:
            try:
                self.broker.send_shard(stage.queue, self.run_dir, self.run_name, c.iteration_id, stage.name.value,
                                       c.shard)
            except Exception as exc:  # redis.ConnectionError and the like: nothing is marked sent
                log.warning("could not send %s shard %d to the broker (%s); retrying", stage.name, c.shard, exc)
                return
            self._through_outages(lambda c=c: self._mark_sent(store, c.id))
