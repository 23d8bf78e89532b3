"""A training shard across nodes (`train.nodes: N`, `train.launcher: torchrun`): the train stage's N shards are
the gang's N nodes, each taken by a `cai worker --queues train` on its own node; the worker holding shard r is
node rank r.

Node rank 0 runs the train stage itself, as one node would, and for every trainer run it starts opens a new
rendezvous through `GangLead` (posted in the database: `loop.store.gangs`); every other node follows it
(`follow`): joins each rendezvous posted by a live node rank 0 with its rank of the same spec, and records its
shard done once node rank 0 has committed the adapter. A gang that does not assemble within
`train.rendezvous_timeout_s`, or loses a node, ends on every node (torchrun's own failure, or the watch here
stopping it), and every shard is retried: node rank 0 resumes from the last checkpoint under a new rendezvous id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from loop.config import RunConfig
from loop.pipeline.context import IterationContext
from loop.store import Store
from loop.store.gangs import Meeting, joined, joined_before, leader, mark_joined, post
from loop.store.shards import Claim
from policies.training.launcher import Rendezvous, free_endpoint, join

log = logging.getLogger(__name__)


class GangIncomplete(RuntimeError):
    """Node rank 0 started no trainer run within the rendezvous timeout: the gang never formed."""


class GangLead:
    """Node rank 0's side (the launcher's gang hooks): a new rendezvous per trainer run, and a watch that stops the
    run when a node that joined it is gone."""

    def __init__(self, store: Store, claim: Claim, config: RunConfig, iteration_id: int, stage: str):
        self.store, self.claim, self.iteration_id, self.stage = store, claim, iteration_id, stage
        self.train = config.train
        self.nodes = config.train.nodes
        self.runs = 0
        self.meeting: Meeting | None = None
        self.seen: dict[int, str] = {}
        """node rank → the claim owner seen in this run's gang: a node that drops out, or whose shard another
        worker took over, is lost."""

    def open(self, spec_path: Path) -> Rendezvous:
        self.runs += 1
        rendezvous_id = f"cai-{self.iteration_id}-{self.stage}-a{self.claim.attempt}-{self.runs}"
        endpoint = self.train.rendezvous or free_endpoint()
        self.meeting, self.seen = Meeting(rendezvous_id, endpoint, str(spec_path), self.claim.owner), {}
        post(self.store, self.claim, self.meeting)
        log.info("training gang %s: waiting for %d nodes at %s", rendezvous_id, self.nodes, endpoint)
        return Rendezvous(self.nodes, endpoint, rendezvous_id, self.train.rendezvous_timeout_s)

    def watch(self) -> str | None:
        with self.store.session() as session:
            now = joined(session, self.iteration_id, self.stage, self.meeting.rendezvous_id)
        lost = sorted(rank for rank, owner in self.seen.items() if now.get(rank) != owner)
        self.seen = {**now, **self.seen}
        if not lost:
            return None
        log.warning("training gang %s lost node rank %d: ending it on every node; the shards are retried from the "
                    "last checkpoint under a new rendezvous", self.meeting.rendezvous_id, lost[0])
        return f"node rank {lost[0]} left the training gang {self.meeting.rendezvous_id}"

    def close(self, ok: bool) -> None:
        post(self.store, self.claim, replace(self.meeting, state="done" if ok else "failed"))


def leader_gone(store: Store, iteration_id: int, stage: str, rendezvous_id: str) -> str | None:
    """Why a node should stop its rank of `rendezvous_id` now (node rank 0 left it), or None."""
    with store.session() as session:
        lead = leader(session, iteration_id, stage)
    if lead.done or (lead.meeting is not None and lead.meeting.rendezvous_id == rendezvous_id
                     and lead.meeting.state == "done"):
        return None
    if not lead.live or lead.meeting is None or lead.meeting.rendezvous_id != rendezvous_id:
        return f"node rank 0 left the training gang {rendezvous_id}"
    if lead.meeting.state == "failed":
        return f"node rank 0's trainer of gang {rendezvous_id} failed"
    return None


def follow(ctx: IterationContext, store: Store, claim: Claim, poll_s: float) -> None:
    """Node rank `ctx.shard` (> 0): join every trainer run node rank 0 opens, until node rank 0's shard is done;
    then record this shard done too."""
    train, stage = ctx.config.train, ctx.stage.value
    with store.session() as session:
        joined_ids = {joined_before(session, claim)} - {None}
    deadline = time.monotonic() + train.rendezvous_timeout_s
    while True:
        with store.session() as session:
            lead = leader(session, ctx.iteration_id, stage)
        if lead.done:
            with store.session() as session:
                ctx.complete(session)
            return
        meeting = lead.meeting
        if lead.live and meeting is not None and meeting.state == "open" and meeting.rendezvous_id not in joined_ids:
            joined_ids.add(meeting.rendezvous_id)
            mark_joined(store, claim, meeting.rendezvous_id)
            log.info("node rank %d joins training gang %s at %s", ctx.shard, meeting.rendezvous_id, meeting.endpoint)
            join(Path(meeting.spec), Rendezvous(train.nodes, meeting.endpoint, meeting.rendezvous_id,
                                                train.rendezvous_timeout_s, node_rank=ctx.shard),
                 processes=train.processes,
                 watch=lambda rid=meeting.rendezvous_id: leader_gone(store, ctx.iteration_id, stage, rid))
            deadline = time.monotonic() + train.rendezvous_timeout_s
        elif time.monotonic() > deadline:
            raise GangIncomplete(f"node rank 0 of the training gang started no trainer within "
                                 f"{train.rendezvous_timeout_s:g} s (train.rendezvous_timeout_s): the gang needs "
                                 f"{train.nodes} workers with --queues train, one per node")
        time.sleep(poll_s)
