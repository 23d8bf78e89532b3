"""The gates in the iteration flow (tiny model): decisions recorded and shown, rollback then iterate, halts,
`cai eval` and `cai metrics`."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import loop.pipeline.context
from loop.cli import app
from loop.config import RunConfig, resolve_paths, save_run_config
from loop.evaluation.gates import GATES
from loop.operate.promotion import RunHalted
from loop.pipeline.iteration import run_iteration
from loop.pipeline.stages import STAGES
from loop.store import EvalResponse, Evaluation, GateDecision, Iteration, PolicyMove, Run, Sample
from loop.store.database import open_run_store
from tests.loop.refuser import train_a_refuser

ROOT = Path(__file__).resolve().parents[2]
OPEN_GATES = {g.setting: None for g in GATES}


def tiny_config(model_dir, home, **gates) -> RunConfig:
    raw = RunConfig(
        home=home, seed=0, threads=2,
        model={"name": str(model_dir), "device": "cpu"},
        prompts={"files": [ROOT / "data/prompts/harmful.jsonl", ROOT / "data/prompts/borderline.jsonl"],
                 "per_iteration": 2},
        generation={"max_new_tokens": 4}, critique={"max_new_tokens": 4},
        judge={"margin": 0.0, "min_label_prob": 1e-12},  # a random tiny model puts ~1e-5 on any token
        pairs={"sampler": {"length_tolerance": None}},
        train={"preference": {"batch_size": 2, "max_length": 64, "learning_rate": 1e-2}, "lora": {"r": 4, "alpha": 8}},
        evaluation={"per_set": 2, "max_new_tokens": 5, "refusal": {"classifier": "lexical"}},
        gates=OPEN_GATES | gates,
    )
    return resolve_paths(raw, ROOT)


@pytest.fixture
def config(tiny_model_dir, cai_home) -> RunConfig:
    return tiny_config(tiny_model_dir, cai_home)


def read(run_dir: Path, query):
    store = open_run_store(run_dir, write=True)
    with store.session() as s:
        rows = list(s.scalars(query))
    store.dispose()
    return rows


def test_every_iteration_records_metrics_and_a_decision_shown_in_status(config, tmp_path):
    summary = run_iteration(config, tmp_path)
    assert summary["gate"]["outcome"] == "promote" and summary["current_policy"] == "v1"
    metrics = summary["evaluation"]["metrics"]
    for name in ("harmful_safe_rate", "benign_refusal_rate", "win_rate_vs_previous", "win_rate_vs_previous_lower",
                 "position_consistency_vs_previous", "kl_vs_reference", "kl_vs_previous", "mean_length_chars",
                 "mean_length_tokens", "violation_rate", "refusal_lexical_precision", "refusal_lexical_recall",
                 "refusal_outcome_precision", "harmful_safe_rate_outcome", "previous_benign_refusal_rate_lexical",
                 "base_harmful_refuse_then_comply_rate", "harmful_safe_drop_other", "control_tokens_in_answers",
                 "previous_control_tokens_in_answers"):
        assert name in metrics, name
    # Answers that spell a control token, counted at every stage that writes answers (a random model writes few).
    counted = summary["control_tokens_in_answers"]
    assert list(counted) == ["generate", "critique", "evaluate"] and counted["evaluate"] == metrics[
        "control_tokens_in_answers"]
    if metrics["previous_mean_length_chars"] > 0:  # a random model may answer with special tokens only
        assert metrics["length_ratio"] == metrics["mean_length_chars"] / metrics["previous_mean_length_chars"]
    else:
        assert "length_ratio" not in metrics  # undefined: not stored, so a length gate would reject
    assert metrics["kl_vs_reference"] > 0 and metrics["kl_vs_previous"] == metrics["kl_vs_reference"]  # π_0 = base
    # the same answers by role: each set has two answers, so the whole mean is the mean of the three
    by_role = [metrics[f"kl_vs_reference_{role}"] for role in ("harmful", "benign_risky", "helpful")]
    assert metrics["kl_vs_reference"] == pytest.approx(sum(by_role) / 3)
    # 2 prompts per set x 3 sets, for the base and the candidate; answered once each
    answers = read(tmp_path, select(EvalResponse))
    assert sorted((r.policy_version, r.eval_set) for r in answers) == sorted(
        (v, s) for v in (0, 1) for s in ("harmful", "benign_risky", "helpful") for _ in range(2))
    moves = read(tmp_path, select(PolicyMove))
    assert [(m.from_version, m.to_version, m.kind) for m in moves] == [(0, 1, "promote")]

    second = run_iteration(config, tmp_path)
    assert second["evaluation"]["previous"] == "v1"
    # v1's answers were reused as the previous policy's: only v2's are new
    assert len(read(tmp_path, select(EvalResponse))) == 3 * 6

    status = CliRunner().invoke(app, ["status", "--run-dir", str(tmp_path)])
    assert status.exit_code == 0, status.output
    assert "gates" in status.output and "promote" in status.output and "kl_vs_reference" in status.output


def test_a_rejected_candidate_leaves_the_current_policy(tiny_model_dir, cai_home, tmp_path):
    # An impossible win-rate bound: every candidate is rejected with that reason.
    config = tiny_config(tiny_model_dir, cai_home, min_win_rate_lower=0.99)
    summary = run_iteration(config, tmp_path)
    assert summary["gate"]["outcome"] == "reject" and summary["current_policy"] == "v0"
    assert summary["gate"]["reasons"][0].startswith("win rate against the previous policy too low")
    assert summary["policy_version"] == "v1"  # the candidate and the iteration's data are kept
    second = run_iteration(config, tmp_path)
    assert second["policy_in"] == "v0"


def test_a_refuse_everything_candidate_is_rejected_for_over_refusal(tiny_model_dir, cai_home, tmp_path,
                                                                    monkeypatch):
    config = tiny_config(tiny_model_dir, cai_home, max_benign_refusal_rise=0.05)
    config = config.model_copy(update={
        "train": config.train.model_copy(update={"sft": config.train.sft.model_copy(update={
            "epochs": 8, "learning_rate": 2e-2, "batch_size": 8, "max_length": 96})}),
        "evaluation": config.evaluation.model_copy(update={"per_set": 4, "max_new_tokens": 12})})
    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=train_a_refuser))
    summary = run_iteration(config, tmp_path)
    gate, metrics = summary["gate"], summary["evaluation"]["metrics"]
    assert (gate["outcome"], gate["candidate"], gate["current_policy"]) == ("reject", "v1", "v0")
    assert gate["reasons"] == [f"over-refusal: benign requests refused more often: benign_refusal_rise = "
                               f"{metrics['benign_refusal_rise']:.4g} (limit <= 0.05)"]
    assert metrics["benign_refusal_rate"] >= 0.75 and metrics["previous_benign_refusal_rate"] == 0.0
    assert read(tmp_path, select(Run))[0].current_policy == 0


def test_rollback_then_iterate_generates_with_the_restored_policy(config, tmp_path, monkeypatch):
    run_iteration(config, tmp_path)
    run_iteration(config, tmp_path)
    runner = CliRunner()
    moved = runner.invoke(app, ["rollback", "--run-dir", str(tmp_path), "--reason", "v2 answers worse"])
    assert moved.exit_code == 0, moved.output
    assert "v2 → v1 (v2 answers worse)" in moved.output
    moves = read(tmp_path, select(PolicyMove).order_by(PolicyMove.id))
    assert (moves[-1].from_version, moves[-1].to_version, moves[-1].kind, moves[-1].reason) == \
        (2, 1, "rollback", "v2 answers worse")

    loaded = []
    real = loop.pipeline.context.load_model
    monkeypatch.setattr(loop.pipeline.context, "load_model",
                        lambda *a, **kw: loaded.append(kw.get("adapter")) or real(*a, **kw))
    summary = run_iteration(config, tmp_path)
    assert summary["policy_in"] == "v1"
    assert loaded[0] == tmp_path / "policies" / "v1"  # generation loaded v1's adapter
    third = read(tmp_path, select(Iteration).where(Iteration.index == 3))[0]
    assert {s.policy_version for s in read(tmp_path, select(Sample).where(Sample.iteration_id == third.id))} == {1}

    failed = runner.invoke(app, ["rollback", "--run-dir", str(tmp_path), "--to", "v9"])
    assert failed.exit_code == 2 and "no policy v9 in this run" in failed.output


def test_a_halt_blocks_the_run_until_an_operator_acts(tiny_model_dir, cai_home, tmp_path):
    config = tiny_config(tiny_model_dir, cai_home, halt_kl_reference=0.0)  # any drift at all is a "blow-up"
    summary = run_iteration(config, tmp_path)
    assert summary["gate"]["outcome"] == "halt" and summary["current_policy"] == "v0"
    with pytest.raises(RunHalted, match="the run is halted since candidate v1"):
        run_iteration(config, tmp_path)
    runner = CliRunner()
    blocked = runner.invoke(app, ["iterate", "--config", str(_saved(config, tmp_path)), "--run-dir", str(tmp_path)])
    assert blocked.exit_code == 2 and "cai rollback" in blocked.output
    assert runner.invoke(app, ["rollback", "--run-dir", str(tmp_path), "--to", "0"]).exit_code == 0
    assert read(tmp_path, select(GateDecision))[0].resolved_at is not None
    exposition = runner.invoke(app, ["metrics", "--run-dir", str(tmp_path)]).stdout
    assert 'cai_run_halted{run="' in exposition and "} 0.0" in exposition.split("cai_run_halted{")[1]
    assert run_iteration(config, tmp_path.resolve())["iteration"] == 2


def _saved(config: RunConfig, folder: Path) -> Path:
    path = folder / "given.yaml"
    save_run_config(config, path)
    return path


def test_cai_eval_and_metrics(config, tmp_path):
    run_iteration(config, tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "--policy", "v1", "--json"])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)
    assert (result["policy"], result["against"]) == ("v1", "v0")
    assert result["iteration_id"] is not None  # the iteration's own evaluation, read back

    fresh = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "--policy", "0", "--against", "1"])
    assert fresh.exit_code == 0, fresh.output
    assert "v0 against v1" in fresh.output and "win_rate_vs_previous" in fresh.output
    assert len(read(tmp_path, select(Evaluation))) == 2
    assert len(read(tmp_path, select(EvalResponse))) == 12  # nothing regenerated

    missing = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "--policy", "7"])
    assert missing.exit_code == 2 and "no policy v7" in missing.output

    exposition = runner.invoke(app, ["metrics", "--run-dir", str(tmp_path)])
    assert exposition.exit_code == 0
    text = exposition.stdout
    run_name = read(tmp_path, select(Run))[0].name
    assert f'cai_gate_decision{{candidate="v1",iteration="1",outcome="promote",run="{run_name}"}} 1.0' in text
    assert f'cai_current_policy_version{{run="{run_name}"}} 1.0' in text
    assert 'metric="harmful_safe_rate"' in text and "# TYPE cai_gate_decisions_total counter" in text
