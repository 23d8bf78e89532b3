"""`tracking:` — TensorBoard event files and offline W&B runs, read back; failures that never fail an iteration;
and a real iteration whose training steps, stage times and evaluation land in TensorBoard."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from pydantic import ValidationError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import loop.tracking
from loop.config import ConfigError, RunConfig, resolve_paths
from loop.config.tracking import TrackingSettings
from loop.pipeline.inputs import fingerprint
from loop.pipeline.iteration import _tracker, run_iteration
from loop.store import Run
from loop.store.database import open_run_store
from loop.tracking import STEP, IterationTracker, check_tracking, open_tracker
from tests.loop.runs import ROOT, tiny_config

SUMMARY = {"wall_s": {"generate": 1.5}, "samples": 4, "serving": {},
           "evaluation": {"wall_s": 3.0, "metrics": {"harmful_safe_rate": 0.75, "win_rate_vs_previous": 0.5}},
           "gate": {"outcome": "reject", "candidate": "v2", "current_policy": "v1",
                    "reasons": ["harmful_safe_rate 0.75 < 0.8"]}}


def send_events(tracker: IterationTracker) -> None:
    """Two steps of the main trainer run, one of a second run, a finished stage and the decision."""
    for step, loss in ((1, 0.7), (2, 0.5)):
        tracker.training_step("train", {"kind": "step", "trainer": "preference", "step": step, "loss": loss,
                                        "tokens_per_s": 100.0})
    tracker.training_step("sft", {"kind": "step", "trainer": "sft", "step": 1, "loss": 1.25})
    tracker.stage_done("generate", lambda: SUMMARY)
    tracker.decided(SUMMARY)
    tracker.close()


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(log_dir: Path) -> dict[str, str]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag.removesuffix("/text_summary"): events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in events.Tags()["tensors"]}


def test_tensorboard_events_read_back(tmp_path):
    send_events(open_tracker(TrackingSettings(tensorboard="tb"), tmp_path, iteration=3, steps_before=10))
    found = scalars(tmp_path / "tb")  # relative to the run directory
    # Steps continue after the earlier iterations' 10, and the second trainer run after the first.
    assert found["trainer/train/loss"] == [(11, pytest.approx(0.7)), (12, pytest.approx(0.5))]
    assert found["trainer/train/tokens_per_s"] == [(11, 100.0), (12, 100.0)]
    assert found["trainer/sft/loss"] == [(13, 1.25)]
    assert found["stage/generate/wall_s"] == [(3, 1.5)] and found["stage/generate/samples"] == [(3, 4.0)]
    assert found["evaluation/harmful_safe_rate"] == [(3, 0.75)] and found["evaluation/wall_s"] == [(3, 3.0)]
    assert found["gate/outcome"] == [(3, 0.0)]  # reject
    assert texts(tmp_path / "tb") == {"gate/decision": "reject candidate v2; current policy v1",
                                      "gate/reasons": "harmful_safe_rate 0.75 < 0.8"}


def test_an_absolute_tensorboard_folder_is_used_as_given(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    send_events(open_tracker(TrackingSettings(tensorboard=elsewhere), tmp_path / "run", iteration=1))
    assert "trainer/train/loss" in scalars(elsewhere)


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for variable in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    settings = TrackingSettings(wandb={"project": "cai-test"})
    assert settings.wandb.mode == "offline"  # nothing is uploaded unless asked for
    send_events(open_tracker(settings, tmp_path / "run", iteration=1, run_name="quickstart",
                             run_key="0123456789abcdef", config={"seed": 0}))
    wandb.teardown()  # finish() returns before W&B's service has written the file; a process's exit waits for it
    runs = list((tmp_path / "wandb").glob("offline-run-*-0123456789abcdef"))
    assert len(runs) == 1
    # The run's records: protobuf with its keys and texts stored as they are.
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    for key in (b"trainer/train/loss", STEP.encode(), b"stage/generate/wall_s", b"evaluation/harmful_safe_rate",
                b"gate/outcome", b"gate/decision", b"harmful_safe_rate 0.75 < 0.8"):
        assert key in data, key


class Recording:
    name = "recording"

    def __init__(self):
        self.calls = []

    def scalars(self, values, axis, step):
        self.calls.append((dict(values), axis, step))

    def texts(self, values, axis, step):
        self.calls.append((dict(values), axis, step))

    def flush(self):
        pass

    def close(self):
        self.calls.append("closed")


class DiskFull(Recording):
    name = "full"

    def scalars(self, values, axis, step):
        raise OSError(28, "No space left on device")


def test_a_failing_sink_is_logged_and_dropped_while_the_others_go_on(caplog):
    good, bad = Recording(), DiskFull()
    tracker = IterationTracker([bad, good], iteration=1)
    with caplog.at_level(logging.WARNING, logger="loop.tracking"):
        send_events(tracker)
    assert [r.getMessage() for r in caplog.records] == [
        "full tracking failed (OSError: [Errno 28] No space left on device); nothing more is sent to it in this "
        "iteration"]
    assert good.calls[0] == ({"trainer/train/loss": 0.7, "trainer/train/tokens_per_s": 100.0}, STEP, 1)
    assert good.calls[-1] == "closed" and not tracker.enabled


def test_a_failing_summary_skips_the_stage_only(caplog):
    good = Recording()
    tracker = IterationTracker([good], iteration=1)
    tracker.stage_done("generate", lambda: 1 / 0)
    tracker.stage_done("critique", lambda: {"wall_s": {"critique": 2.0}, "critiques": 3, "revisions": 2})
    assert "stage generate not tracked" in caplog.text
    assert good.calls == [({"stage/critique/wall_s": 2.0, "stage/critique/critiques": 3.0,
                            "stage/critique/revisions": 2.0}, "iteration", 1)]


def test_a_sink_that_cannot_start_is_left_out(tmp_path, caplog):
    (tmp_path / "tb").write_text("a file where the folder should be")
    tracker = open_tracker(TrackingSettings(tensorboard="tb"), tmp_path, iteration=1)
    assert not tracker.enabled and "tensorboard tracking did not start" in caplog.text


def test_a_missing_package_names_the_pip_install(tmp_path, monkeypatch):
    real = loop.tracking.importlib.util.find_spec
    monkeypatch.setattr(loop.tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"tracking.wandb needs the wandb package: pip install 'cai\[tracking\]'"):
        check_tracking(TrackingSettings(tensorboard="tb", wandb={"project": "p"}))
    check_tracking(TrackingSettings(tensorboard="tb"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match="pip install wandb"):
        open_tracker(TrackingSettings(wandb={"project": "p"}), tmp_path, iteration=1)


def test_without_tracking_neither_package_is_imported():
    code = ("import sys; from pathlib import Path; from loop.config import RunConfig; "
            "from loop.tracking import open_tracker; "
            "assert not open_tracker(RunConfig.model_fields['tracking'].default, Path('.'), iteration=1).enabled; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard') "
            "or m == 'torch.utils.tensorboard'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_section_is_checked_and_is_not_an_input():
    with pytest.raises(ValidationError):
        TrackingSettings(wandb={"project": "p", "mode": "cloud"})
    with pytest.raises(ValidationError):
        TrackingSettings(tensorboard_dir="tb")
    config = RunConfig(prompts={"files": ["p.jsonl"]}, tracking={"tensorboard": "tb"})
    assert "tracking" not in fingerprint(config)  # a resume may turn tracking on or off


def test_an_iteration_writes_steps_stage_times_and_evaluation(tiny_model_dir, cai_home, tmp_path):
    raw = tiny_config(tiny_model_dir, cai_home, prompts={"per_iteration": 2}, critique={"rounds": 1},
                      evaluation={"per_set": 1}, tracking={"tensorboard": "tb"})
    config = resolve_paths(RunConfig(**raw), ROOT)
    summary = run_iteration(config, tmp_path)
    found = scalars(tmp_path / "tb")
    steps = found["trainer/train/loss"]
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1))
    for stage in ("generate", "critique", "judge", "pairs", "train", "evaluate"):
        assert found[f"stage/{stage}/wall_s"] == [(1, pytest.approx(summary["wall_s"][stage]))]
    assert found["stage/pairs/pairs"] == [(1, summary["pairs"])]
    assert found["stage/train/trained_pairs"] == [(1, summary["train"]["trained_pairs"])]
    for name, value in summary["evaluation"]["metrics"].items():
        assert found[f"evaluation/{name}"] == [(1, pytest.approx(value))], name
    assert found["gate/outcome"] == [(1, 1.0)]  # open gates: promote
    # The next iteration's steps continue after this one's.
    store = open_run_store(tmp_path, write=True)
    try:
        with store.session() as session:
            run_id = session.query(Run).one().id
        tracker = _tracker(config, store, tmp_path, run_id, 2)
        tracker.close()
        assert tracker.base == len(steps)
    finally:
        store.dispose()
