"""`python -m policies.training SPEC.json` in a child process, single and multi-process (DeepSpeed ZeRO-2 on CPU)."""

import json
import shutil
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policies.training.launcher import (
    Rendezvous,
    SlurmAllocation,
    TrainingFailed,
    command,
    free_endpoint,
    join,
    last_words,
    launch,
)
from policies.training.settings import PreferenceSettings
from policies.training.spec import TrainSpec

PAIRS = [{"prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": f"A careful answer {i}.",
          "rejected": "No.", "target": 0.9} for i in range(8)]


def spec_for(tmp_path, tiny_model_dir, **overrides) -> TrainSpec:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    fields = {"kind": "preference", "model_dir": tiny_model_dir, "data": data, "output_dir": tmp_path / "out",
              "device": "cpu", "threads": 1, "lora": {"r": 4, "alpha": 8},
              "preference": PreferenceSettings(batch_size=2, max_length=64, learning_rate=1e-2)}
    return TrainSpec(**(fields | overrides))


def test_child_process_trains_and_reports_progress(tmp_path, tiny_model_dir):
    events = []
    metrics = launch(spec_for(tmp_path, tiny_model_dir), on_progress=events.append)
    assert metrics["optimizer_steps"] == 4 and metrics["loss_after"] < metrics["loss_before"]
    assert [e["kind"] for e in events] == ["start", "step", "step", "step", "step", "done"]
    # The child uses exactly the threads it was given, so trainers never oversubscribe a small machine.
    assert (events[0]["threads"], events[0]["interop_threads"]) == (1, 1)
    weights = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for n, t in weights.items() if "lora_B" in n)


def test_a_failing_trainer_raises_with_its_log_tail(tmp_path, tiny_model_dir):
    spec = spec_for(tmp_path, tiny_model_dir, data=tmp_path / "missing.jsonl")
    with pytest.raises(TrainingFailed, match="missing.jsonl"):
        launch(spec)


@pytest.mark.slow
def test_two_processes_with_deepspeed_zero2_end_where_one_process_does(tmp_path, tiny_model_dir):
    import deepspeed  # noqa: F401  (in the test extras: missing, this test fails rather than skips)

    events = []
    settings = PreferenceSettings(batch_size=2, max_length=64, learning_rate=1e-2, scheduler="linear", warmup_steps=1)
    spec = spec_for(tmp_path / "zero2", tiny_model_dir, deepspeed="zero2", preference=settings)
    metrics = launch(spec, launcher="torchrun", processes=2, on_progress=events.append)
    # 4 micro-batches of 2 pairs shared by 2 ranks: 2 optimizer steps, each over 4 pairs, reported once each.
    assert metrics["optimizer_steps"] == 2
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2]
    assert metrics["loss_after"] < metrics["loss_before"]
    # One process accumulating the same two micro-batches per step takes the same steps (the same schedule too).
    single = spec_for(tmp_path / "one", tiny_model_dir, preference=settings.model_copy(update={"grad_accum": 2}))
    launch(single)
    ours = load_file(single.adapter_dir / "adapter_model.safetensors")
    theirs = load_file(spec.adapter_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], atol=1e-4, rtol=1e-3)


def test_more_than_one_process_needs_a_deepspeed_config(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="need a DeepSpeed config"):
        launch(spec_for(tmp_path, tiny_model_dir), launcher="torchrun", processes=2)


# --- across nodes -------------------------------------------------------------------------------------------------

RENDEZVOUS = Rendezvous(nodes=2, endpoint="node0:29511", run_id="cai-7-train-a1-1", timeout_s=60, node_rank=1)


def test_a_node_of_a_gang_runs_torchrun_with_its_own_rank_against_one_rendezvous():
    assert command(Path("/shared/spec.json"), "torchrun", 4, RENDEZVOUS) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--nnodes=2",
        "--rdzv-endpoint=node0:29511", "--rdzv-id=cai-7-train-a1-1", "--max-restarts=0", "--node-rank=1",
        "--rdzv-backend=static", "--rdzv-conf=timeout=60", "-m", "policies.training", "/shared/spec.json"]


def test_slurm_starts_every_node_with_srun_against_a_c10d_rendezvous():
    assert command(Path("/shared/spec.json"), "slurm", 8, replace(RENDEZVOUS, node_rank=0),
                   ["--partition=gpu", "--gpus-per-node=8"]) == [
        "srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--partition=gpu", "--gpus-per-node=8",
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=8", "--nnodes=2",
        "--rdzv-endpoint=node0:29511", "--rdzv-id=cai-7-train-a1-1", "--max-restarts=0", "--rdzv-backend=c10d",
        "--rdzv-conf=join_timeout=60", "-m", "policies.training", "/shared/spec.json"]


def test_slurm_outside_an_allocation_fails_in_one_line(tmp_path, tiny_model_dir):
    if shutil.which("srun"):
        pytest.skip("this machine has Slurm: the command would run")
    gang = SlurmAllocation(nodes=2, timeout_s=30)
    with pytest.raises(TrainingFailed, match="cannot start the trainer: srun is not installed here"):
        launch(spec_for(tmp_path, tiny_model_dir, deepspeed="zero2"), launcher="slurm", gang=gang)
    rendezvous = gang.open(tmp_path / "spec.json")
    assert rendezvous.endpoint.startswith(socket.gethostname() + ":") and rendezvous.run_id.startswith("cai-")


def test_a_gang_of_one_process_per_node_still_needs_deepspeed(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="2 training processes need a DeepSpeed config"):
        launch(spec_for(tmp_path, tiny_model_dir), launcher="slurm", gang=SlurmAllocation(nodes=2, timeout_s=30))


def test_a_watch_that_gives_a_reason_stops_the_trainer(tmp_path, tiny_model_dir):
    """The gang's teardown: the trainer is stopped (before its first step here) and the reason is the error."""
    asked = []

    class LostNode:
        nodes = 1

        def open(self, spec_path):
            return None

        def watch(self):
            asked.append(1)
            return "node rank 1 left the training gang g"

        def close(self, ok):
            asked.append(ok)

    with pytest.raises(TrainingFailed, match="preference training was stopped: node rank 1 left the training gang g"):
        launch(spec_for(tmp_path, tiny_model_dir), launcher="torchrun", gang=LostNode())
    assert asked == [1, False] and not (tmp_path / "out" / "result.json").exists()
    assert not (tmp_path / "out" / "trainer.pid").exists()


def test_a_node_cannot_join_a_spec_its_shared_folder_does_not_hold(tmp_path):
    with pytest.raises(TrainingFailed, match="the run folder must be shared by every node"):
        join(tmp_path / "missing" / "spec.json", RENDEZVOUS)


TORCHRUN_SUMMARY = """RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:40151
E1206 agent failed
============================================================
policies.training FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 0)
  exitcode  : {code}
  traceback : {traceback}
============================================================""".splitlines()


@pytest.mark.parametrize("code, traceback, said", [
    ("-9 (pid: 8178)  (SIGKILL)", "Signal 9 (SIGKILL) received by PID 8178", "Signal 9 (SIGKILL) received by PID 8178"),
    ("1 (pid: 8179)", "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
     "E1206 agent failed"),
])
def test_a_torchrun_failure_is_told_by_its_cause_not_its_banner(code, traceback, said):
    assert last_words([line.format(code=code, traceback=traceback) for line in TORCHRUN_SUMMARY]) == said
    assert last_words(["step 1", "ValueError: bad data", "CAI_PROGRESS {}"]) == "ValueError: bad data"


def test_a_gang_that_does_not_assemble_fails_in_one_line(tmp_path, tiny_model_dir):
    """Node rank 0 alone: torchrun's rendezvous gives up after its timeout, and says how many nodes came."""

    class Alone:
        nodes = 2

        def open(self, spec_path):
            return Rendezvous(2, free_endpoint("127.0.0.1"), "cai-alone", timeout_s=3)

        def watch(self):
            return None

        def close(self, ok):
            assert not ok

    with pytest.raises(TrainingFailed, match=r"preference training exited with code 1: .*Timed out after \d+ seconds "
                                             r"waiting for clients\. 1/2 clients joined"):
        launch(spec_for(tmp_path, tiny_model_dir, deepspeed="zero2"), launcher="torchrun", gang=Alone())
