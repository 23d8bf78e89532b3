"""A training shard across two "nodes" on one machine: the daemon with two `cai worker --queues train` processes,
one rank each (gloo on CPU, DeepSpeed ZeRO-2), trains the adapter one process trains with the same global batch,
and a rank killed mid-shard makes the gang restart from its checkpoint and end with the same weights."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select, update

from loop.config import RunConfig
from loop.pipeline.names import StageName
from loop.service.gang import GangIncomplete, GangLead, follow, leader_gone
from loop.store import Metric, ShardClaim, StageRun
from loop.store.gangs import joined_before, leader, mark_joined
from loop.store.shards import ShardLost, claim, ensure_claims, shard_count
from policies.training.launcher import launch
from policies.training.spec import TrainSpec
from tests.loop.runs import tiny_config, write_config
from tests.loop.service_runs import Service, planned_stage, stop, wait_exit
from tests.loop.services import postgres_database, redis_server

SERVICE = {"shard_size": 2, "shard_lease_s": 3.0, "requeue_after_s": 3.0, "poll_s": 0.2, "max_attempts": 20}
EPOCHS = 12
"""Optimizer steps (one per epoch: 4 pairs, 2 per rank), each checkpointed, so that a rank killed after the first
checkpoint dies mid-shard. Not many more: two processes' float rounding differs from one's, and over many AdamW
steps at this learning rate the difference grows past any tolerance."""
TRAIN = {"launcher": "torchrun", "nodes": 2, "processes": 1, "deepspeed": "zero2", "rendezvous_timeout_s": 60,
         "budget": {"max_pairs": 4},
         "preference": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-2, "epochs": EPOCHS,
                        "checkpoint_every": 1}}


# --- the gang's meeting point in the database, on SQLite and PostgreSQL ----------------------------------------------


def _train_shards(store, nodes: int = 2) -> int:
    iteration_id = planned_stage(store, "generate", 1)
    with store.session() as session:
        assert shard_count(session, iteration_id, "train", 16, nodes=nodes) == nodes
        assert shard_count(session, iteration_id, "train", None, nodes=nodes) == 1  # `cai iterate`: one shard
        ensure_claims(session, iteration_id, "train", nodes)
    return iteration_id


def _config(**train) -> RunConfig:
    return RunConfig(prompts={"files": ["p.jsonl"]}, train={**TRAIN, **train})


def _node(store, iteration_id: int, rank: int, config: RunConfig) -> SimpleNamespace:
    """What `follow` reads of an iteration context (a stand-in: no models are needed to follow a gang)."""
    held = claim(store, iteration_id, "train", rank, lease_s=60)
    completed = []

    def complete(session):
        session.add(StageRun(iteration_id=iteration_id, stage="train", shard=rank, wall_s=0.0))
        completed.append(rank)

    return SimpleNamespace(claim=held, config=config, stage=StageName.TRAIN, iteration_id=iteration_id, shard=rank,
                           complete=complete, completed=completed)


def test_node_rank_0_opens_a_new_rendezvous_for_each_trainer_run_and_sees_a_node_leave(store):
    iteration_id = _train_shards(store)
    config = _config(rendezvous="node0:29500")
    lead_claim = claim(store, iteration_id, "train", 0, lease_s=60)
    lead = GangLead(store, lead_claim, config, iteration_id, "train")
    first = lead.open(Path("/shared/a/spec.json"))
    assert (first.nodes, first.endpoint, first.run_id, first.node_rank) == (2, "node0:29500", "cai-1-train-a1-1", 0)
    with store.session() as session:
        seen = leader(session, iteration_id, "train")
    assert seen.live and not seen.done and seen.meeting.rendezvous_id == "cai-1-train-a1-1"
    member = claim(store, iteration_id, "train", 1, lease_s=60)
    assert lead.watch() is None  # nobody joined yet: torchrun's own timeout covers a gang that never forms
    mark_joined(store, member, "cai-1-train-a1-1")
    assert lead.watch() is None
    member.release(error="TrainingFailed: node rank 1 of the training gang was killed by signal 9")
    assert lead.watch() == "node rank 1 left the training gang cai-1-train-a1-1"
    lead.close(ok=False)
    assert lead.open(Path("/shared/b/spec.json")).run_id == "cai-1-train-a1-2"


def test_a_node_never_joins_a_meeting_left_by_an_earlier_node_rank_0_nor_one_its_shard_joined(store):
    iteration_id = _train_shards(store)
    config = _config()
    first = claim(store, iteration_id, "train", 0, lease_s=60)
    GangLead(store, first, config, iteration_id, "train").open(Path("/shared/spec.json"))
    with store.session() as session:  # node rank 0's worker died; another takes its shard over
        session.execute(update(ShardClaim).where(ShardClaim.id == first.claim_id).values(expires_at=0.0))
    second = claim(store, iteration_id, "train", 0, lease_s=60)
    with store.session() as session:
        seen = leader(session, iteration_id, "train")
    assert seen.live and seen.meeting is None  # the dead worker's meeting is not the new holder's
    member = claim(store, iteration_id, "train", 1, lease_s=60)
    mark_joined(store, member, "cai-1-train-a2-1")
    with store.session() as session:
        session.execute(update(ShardClaim).where(ShardClaim.id == member.claim_id).values(expires_at=0.0))
        session.flush()
    successor = claim(store, iteration_id, "train", 1, lease_s=60)
    with store.session() as session:
        assert joined_before(session, successor) == "cai-1-train-a2-1"
    with pytest.raises(ShardLost):  # the worker that lost node rank 0's shard posts nothing
        GangLead(store, first, config, iteration_id, "train").open(Path("/shared/spec.json"))
    assert second.attempt == 2


def test_a_node_follows_node_rank_0_until_its_shard_is_done(store):
    iteration_id = _train_shards(store)
    node = _node(store, iteration_id, 1, _config())
    lead_claim = claim(store, iteration_id, "train", 0, lease_s=60)
    with store.session() as session:  # node rank 0 committed the adapter (no trainer run needed here)
        session.add(StageRun(iteration_id=iteration_id, stage="train", shard=0, wall_s=1.0))
    lead_claim.release()
    follow(node, store, node.claim, poll_s=0.01)
    assert node.completed == [1]


def test_a_node_whose_node_rank_0_never_opens_a_rendezvous_gives_up_in_one_line(store):
    iteration_id = _train_shards(store)
    node = _node(store, iteration_id, 1, _config(rendezvous_timeout_s=0.2))
    with pytest.raises(GangIncomplete, match="started no trainer within 0.2 s .* needs 2 workers with --queues "
                                             "train, one per node"):
        follow(node, store, node.claim, poll_s=0.01)
    assert node.completed == []


def test_a_node_stops_its_rank_when_node_rank_0_leaves_or_fails(store):
    iteration_id = _train_shards(store)
    lead_claim = claim(store, iteration_id, "train", 0, lease_s=60)
    lead = GangLead(store, lead_claim, _config(), iteration_id, "train")
    rid = lead.open(Path("/shared/spec.json")).run_id
    assert leader_gone(store, iteration_id, "train", rid) is None
    lead.close(ok=True)  # its trainer finished: the other ranks exit by themselves
    assert leader_gone(store, iteration_id, "train", rid) is None
    second = lead.open(Path("/shared/spec.json")).run_id
    assert leader_gone(store, iteration_id, "train", rid) == f"node rank 0 left the training gang {rid}"
    lead.close(ok=False)
    assert leader_gone(store, iteration_id, "train", second) == f"node rank 0's trainer of gang {second} failed"
    lead_claim.release(error="TrainingFailed")
    assert leader_gone(store, iteration_id, "train", second) == f"node rank 0 left the training gang {second}"


# --- the daemon, with real processes -------------------------------------------------------------------------------


def _trainer_of_node(folder: Path, node_rank: int) -> list[int]:
    """The rank processes started by a node's torchrun (the children of the pid in its pid file)."""
    leader = json.loads((folder / f"trainer-node{node_rank}.pid").read_text())["pid"]
    try:
        return [int(pid) for pid in Path(f"/proc/{leader}/task/{leader}/children").read_text().split()]
    except OSError:  # torchrun ended between the two reads
        return []


def _kill_node_after_first_checkpoint(folder: Path, killed: list[int], stop_looking: threading.Event) -> None:
    while not stop_looking.is_set():
        if (folder / "checkpoints" / "engine" / "latest").is_file() and (folder / "trainer-node1.pid").is_file():
            for pid in _trainer_of_node(folder, 1):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gang_run(tmp_path_factory, tiny_model_dir, cai_home):
    """Two iterations of the daemon on a two-node gang; in the second, node rank 1's trainer is killed once the
    first checkpoint is written."""
    folder = tmp_path_factory.mktemp("gang")
    config = write_config(folder / "gang.yaml", tiny_config(tiny_model_dir, cai_home, service=SERVICE, train=TRAIN,
                                                            prompts={"per_iteration": 8}))
    killed: list[int] = []
    done = threading.Event()
    with redis_server(folder / "redis") as redis, postgres_database("cai_gang_test") as database:
        service = Service(folder, config, redis.url, database)
        processes = [service.controller(iterations=2), service.worker("infer,cpu"), service.worker("train"),
                     service.worker("train")]
        killer = threading.Thread(target=_kill_node_after_first_checkpoint, daemon=True, args=(
            service.run_dir / "training" / "iteration-2" / "preference", killed, done))
        killer.start()
        try:
            code = wait_exit(processes[0], "two iterations of the gang")
            assert code == 0, "\n".join(service.log(n) for n in range(1, 5))
            claims = service.query(lambda s: [(c.shard, c.attempts) for c in s.scalars(
                select(ShardClaim).where(ShardClaim.stage == "train").order_by(ShardClaim.iteration_id,
                                                                                 ShardClaim.shard))])
            trained = service.query(lambda s: list(s.scalars(select(Metric.value).where(
                Metric.name == "trained_pairs").order_by(Metric.iteration_id))))
        finally:
            done.set()
            stop(*processes)
        logs = " ".join("\n".join(service.log(n) for n in range(1, service.started + 1)).split())  # unwrapped
    return service.run_dir, claims, trained, killed, logs


def _one_process_adapter(run_dir: Path, iteration: int, out: Path) -> dict[str, torch.Tensor]:
    """The same trainer run in one process, accumulating the two ranks' micro-batches (the same global batch)."""
    spec = TrainSpec.model_validate_json((run_dir / "training" / f"iteration-{iteration}" / "preference"
                                          / "spec.json").read_text())
    one = spec.model_copy(update={"deepspeed": None, "output_dir": out,
                                  "preference": spec.preference.model_copy(update={"grad_accum": 2})})
    launch(one)
    return load_file(one.adapter_dir / "adapter_model.safetensors")


def _assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_two_nodes_train_the_adapter_one_process_trains(gang_run, tmp_path):
    run_dir, claims, trained, _, logs = gang_run
    assert trained == [4, 4], "the budget must fill both iterations: 4 pairs, one micro-batch per rank"
    assert [shard for shard, _ in claims] == [0, 1, 0, 1], "the train stage is one shard per node"
    assert claims[:2] == [(0, 1), (1, 1)], logs
    assert "training gang cai-" in logs and "node rank 1 joins training gang" in logs
    gang = load_file(run_dir / "policies" / "v1" / "adapter_model.safetensors")
    _assert_same_weights(_one_process_adapter(run_dir, 1, tmp_path / "one"), gang)


@pytest.mark.slow
def test_a_killed_rank_restarts_the_gang_from_its_checkpoint(gang_run, tmp_path):
    run_dir, claims, _, killed, logs = gang_run
    assert killed, "node rank 1's trainer was never seen running after a checkpoint"
    assert all(attempts >= 2 for _, attempts in claims[2:]), (claims, logs)
    assert "Signal 9 (SIGKILL) received by PID" in logs or "left the training gang" in logs, logs
    train_log = (run_dir / "training" / "iteration-2" / "preference" / "train.log").read_text()
    assert "resumed from engine checkpoint" in train_log
    gang = load_file(run_dir / "policies" / "v2" / "adapter_model.safetensors")
    _assert_same_weights(_one_process_adapter(run_dir, 2, tmp_path / "one"), gang)
