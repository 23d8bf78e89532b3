"""Shards: the units of work the daemon hands to its workers, and their claims.

A stage of an iteration is split into shards: slices of the iteration's samples where the stage's record says so
(`loop.pipeline.stages.Stage.sharded_by_samples`), else one shard. Each shard has a `ShardClaim` row, created by
the controller before its message is sent. A worker claims the row by compare-and-set (free, or its holder's claim
expired), beats while it works, and commits the shard's outputs together with its StageRun row (the done mark) in
a transaction that first proves the claim is still its own (`Claim.fence`). The StageRun row's unique
(iteration, stage, shard) makes a second commit of the same shard impossible, even if two workers race. A message
for a shard that is done, or held by a live worker, is acknowledged and ignored: the broker's redelivery is never
needed for correctness, only the controller's re-sending of unclaimed or expired shards (`loop.service.controller`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from loop.store.models import Sample, ShardClaim, StageRun
from loop.store.queries import count
from loop.store.session import Store, database_problem

log = logging.getLogger(__name__)


class ShardLost(RuntimeError):
    """This worker's claim expired and the shard may be someone else's now: its work must not be recorded."""


def shard_count(session: Session, iteration_id: int, stage: str, shard_size: int | None, *,
                by_samples: bool = False, nodes: int = 1) -> int:
    """How many shards the stage has: fixed by its claim rows once it started, else planned: `shard_size` samples
    each for a stage split `by_samples`, `nodes` for a training gang's stage, one otherwise (and when `shard_size`
    is None, as `cai iterate` runs)."""
    planned = session.scalar(select(func.max(ShardClaim.shards)).where(
        ShardClaim.iteration_id == iteration_id, ShardClaim.stage == stage))
    if planned:
        return planned
    if shard_size is None:
        return 1
    if not by_samples:
        return nodes
    return max(1, math.ceil(count(session, Sample, Sample.iteration_id == iteration_id) / shard_size))


def done_shards(session: Session, iteration_id: int, stage: str) -> set[int]:
    return set(session.scalars(select(StageRun.shard).where(StageRun.iteration_id == iteration_id,
                                                            StageRun.stage == stage)))


def ensure_claims(session: Session, iteration_id: int, stage: str, shards: int) -> list[ShardClaim]:
    """The stage's claim rows, created where missing (by the run's one controller, under its lease)."""
    rows = {c.shard: c for c in session.scalars(select(ShardClaim).where(
        ShardClaim.iteration_id == iteration_id, ShardClaim.stage == stage))}
    for shard in range(shards):
        if shard not in rows:
            rows[shard] = ShardClaim(iteration_id=iteration_id, stage=stage, shard=shard, shards=shards)
            session.add(rows[shard])
    session.flush()
    return [rows[shard] for shard in range(shards)]


def describe(stage: str, shard: int, shards: int, index: int | None = None) -> str:
    where = f" of iteration {index}" if index is not None else ""
    return f"{stage} shard {shard + 1}/{shards}{where}"


@dataclass
class Claim:
    """A worker's hold on one shard; `fence` inside the transaction that records the shard's work."""

    store: Store
    claim_id: int
    owner: str
    lease_s: float
    attempt: int
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def fence(self, session: Session) -> None:
        """Extend the claim inside the recording transaction; fails (and so rolls it back) if it is not ours.

        An UPDATE, not a read: it takes the row's write lock first, so no other claim slips in before commit."""
        changed = session.execute(update(ShardClaim).where(ShardClaim.id == self.claim_id,
                                                           ShardClaim.owner == self.owner)
                                  .values(expires_at=time.time() + self.lease_s)).rowcount
        if changed != 1:
            raise ShardLost(f"the claim on shard {self.claim_id} expired and was taken by another worker; "
                            "this worker's result was not recorded")

    def heartbeat(self) -> None:
        with self.store.session() as session:
            self.fence(session)

    def release(self, error: str | None = None) -> None:
        """Give the shard back (done, or failed with `error`): the controller may send it again at once."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self.store.session() as session:
            values = {"owner": None, "expires_at": 0.0}
            if error is not None:
                values["error"] = error[:2000]
            session.execute(update(ShardClaim).where(ShardClaim.id == self.claim_id, ShardClaim.owner == self.owner)
                            .values(**values))

    def start_heartbeats(self) -> None:
        """Beat a few times per lease period in a daemon thread, until released."""
        every = self.lease_s / 4

        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    self.heartbeat()
                except ShardLost:  # the recording transaction's fence says so, and records nothing
                    return
                except Exception as exc:  # a database blip: the next beat retries, well within the lease
                    log.warning("shard heartbeat failed: %s", database_problem(exc))

        self._thread = threading.Thread(target=beat, name=f"shard-{self.claim_id}", daemon=True)
        self._thread.start()


def claim(store: Store, iteration_id: int, stage: str, shard: int, lease_s: float) -> Claim | None:
    """Take the shard, or None: it is done, held by a live worker, or unknown (no claim row: not planned)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = time.time()
    with store.session() as session:
        row = session.scalar(select(ShardClaim).where(ShardClaim.iteration_id == iteration_id,
                                                      ShardClaim.stage == stage, ShardClaim.shard == shard))
        if row is None or shard in done_shards(session, iteration_id, stage):
            return None
        attempt = row.attempts + 1
        # Compare-and-set: two workers may both read the row free, only one UPDATE matches it.
        taken = session.execute(
            update(ShardClaim).where(ShardClaim.id == row.id,
                                     or_(ShardClaim.owner.is_(None), ShardClaim.expires_at < now))
            .values(owner=owner, expires_at=now + lease_s, attempts=ShardClaim.attempts + 1)).rowcount
    if taken != 1:
        return None
    return Claim(store, row.id, owner, lease_s, attempt)
