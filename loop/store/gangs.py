"""A training gang's meeting point in the database: with `train.nodes: N` (torchrun) the train stage has N shards,
and the worker holding shard r is node rank r of the gang.

For each trainer run it starts, node rank 0 posts a `Meeting` on its own claim row (where the nodes meet, the
rendezvous id, the spec in the shared run folder, and its claim's owner, so a meeting left by an earlier holder is
never joined) and marks it done or failed when the run ends. Every other node reads it there (`leader`), marks the
rendezvous id it joined on its own row, and runs its rank of the same spec; a rendezvous its shard joined once is
never joined again, by it or by a worker that takes the shard over, since a torchrun rendezvous cannot take a
replacement node. Each side reads the other's rows to see a gang that lost a node (`joined`, `leader`), since
collectives with a node that is gone can hang. Writes are fenced by the claim: a worker that lost its shard posts
nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from loop.store.models import ShardClaim
from loop.store.session import Store
from loop.store.shards import Claim, ShardLost, done_shards

MeetingState = Literal["open", "done", "failed"]


@dataclass(frozen=True)
class Meeting:
    """One trainer run of a gang, as node rank 0 posts it."""

    rendezvous_id: str
    endpoint: str
    spec: str
    owner: str
    """The owner of node rank 0's claim that posted it."""
    state: MeetingState = "open"


@dataclass(frozen=True)
class Leader:
    """What a node of the gang sees of node rank 0: whether its shard is done, whether it is held by a live
    worker, and its latest meeting."""

    done: bool
    live: bool
    meeting: Meeting | None


def _write(store: Store, claim: Claim, value: str | None) -> None:
    with store.session() as session:
        changed = session.execute(update(ShardClaim).where(ShardClaim.id == claim.claim_id,
                                                           ShardClaim.owner == claim.owner)
                                  .values(gang=value)).rowcount
    if changed != 1:
        raise ShardLost(f"the claim on shard {claim.claim_id} was taken by another worker; the training gang "
                        "goes on without this node")


def post(store: Store, claim: Claim, meeting: Meeting) -> None:
    """Node rank 0: the meeting its nodes join now (or its outcome)."""
    _write(store, claim, json.dumps(asdict(meeting)))


def mark_joined(store: Store, claim: Claim, rendezvous_id: str) -> None:
    """Another node: the rendezvous it joins, on its own claim row (what node rank 0 watches)."""
    _write(store, claim, json.dumps({"joined": rendezvous_id}))


def _rows(session: Session, iteration_id: int, stage: str) -> list[ShardClaim]:
    return list(session.scalars(select(ShardClaim).where(ShardClaim.iteration_id == iteration_id,
                                                         ShardClaim.stage == stage).order_by(ShardClaim.shard)))


def _live(row: ShardClaim, now: float) -> bool:
    return row.owner is not None and row.expires_at >= now


def _value(row: ShardClaim) -> dict:
    return json.loads(row.gang) if row.gang else {}


def leader(session: Session, iteration_id: int, stage: str) -> Leader:
    """Node rank 0 as the others see it; its meeting only when its current claim posted it."""
    row = _rows(session, iteration_id, stage)[0]
    meeting = _value(row)
    return Leader(done=0 in done_shards(session, iteration_id, stage), live=_live(row, time.time()),
                  meeting=Meeting(**meeting) if meeting and meeting["owner"] == row.owner else None)


def joined(session: Session, iteration_id: int, stage: str, rendezvous_id: str) -> dict[int, str]:
    """node rank → the owner of its claim, for each node whose live worker marked `rendezvous_id` as joined."""
    now = time.time()
    return {row.shard: row.owner for row in _rows(session, iteration_id, stage)[1:]
            if _live(row, now) and _value(row).get("joined") == rendezvous_id}


def joined_before(session: Session, claim: Claim) -> str | None:
    """The rendezvous this shard's row says was joined, by this worker or an earlier holder of the shard."""
    return _value(session.get(ShardClaim, claim.claim_id)).get("joined")
