"""`python -m policies.training SPEC.json` in a child process, single and multi-process (DeepSpeed ZeRO-2 on CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from policies.training.launcher import TrainingFailed, launch
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
