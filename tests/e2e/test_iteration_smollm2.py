"""Whole iterations on the real SmolLM2-135M-Instruct, driven through the `cai` CLI."""

import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli import app
from loop.evaluation.gates import GATES
from loop.store import Comparison, Critique, Pair, Policy, Sample
from loop.store.database import open_run_store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_config(tmp_path, cai_home) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["home"] = str(cai_home)
    config["prompts"]["files"] = [str(ROOT / "data/prompts" / f) for f in ("harmful.jsonl", "borderline.jsonl")]
    config["prompts"]["draw"] = "random"  # the pairs below are judged: no need for twins
    config["prompts"]["per_iteration"] = 3
    config["generation"]["max_new_tokens"] = 24
    config["critique"]["max_new_tokens"] = 24
    config["judge"]["margin"] = 0.0  # keep every pair so the tiny run always trains
    # A small held-out evaluation and gates open to any candidate: these tests are about the loop's chain.
    config["evaluation"] = {"per_set": 2, "max_new_tokens": 16, "refusal": {"classifier": "lexical"}}
    config["gates"] = {g.setting: None for g in GATES}
    config["pairs"] = {"source": "judged", "sampler": {"length_tolerance": None}}
    config["train"]["preference"]["max_length"] = 192
    # Plain DPO for one epoch, so a fresh adapter's loss is exactly log 2 (the quickstart's RPO adds the NLL).
    config["train"]["preference"] |= {"nll_weight": 0.0, "epochs": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def lora_b(path: Path) -> dict:
    return {k: v for k, v in load_file(path / "adapter_model.safetensors").items() if "lora_B" in k}


def test_two_iterations_on_smollm2_through_the_cli(tiny_config, tmp_path, smollm2_dir):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    first = runner.invoke(app, ["iterate", "--config", str(tiny_config), "--run-dir", str(run_dir)])
    assert first.exit_code == 0, first.output
    assert "loss before → after" in first.output

    status = runner.invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    assert status.exit_code == 0, status.output
    summary = json.loads(status.stdout)
    assert (summary["samples"], summary["critiques"], summary["revisions"], summary["comparisons"]) == (3, 3, 3, 3)
    # Every comparison becomes a pair or a counted drop (with margin 0 a drop is hygiene: an abstention, equal
    # texts, text addressed to the judge); at least one pair trains.
    dropped = sum(v for k, v in summary["sampler"].items() if k.startswith("dropped_"))
    assert summary["pairs"] >= 1 and summary["pairs"] + dropped == 3
    assert summary["policy_version"] == "v1"
    train = summary["train"]
    assert all(math.isfinite(train[k]) for k in ("loss_before", "loss_after", "reward_margin_before",
                                                 "reward_margin_after"))
    assert train["loss_before"] == pytest.approx(math.log(2), abs=1e-4)  # fresh adapter = reference
    assert train["loss_after"] < train["loss_before"]
    assert 0 <= summary["judge"]["mean_p_revision_better"] <= 1

    store = open_run_store(run_dir, write=True)
    with store.session() as s:
        samples = list(s.scalars(select(Sample)))
        assert all(x.response and x.revision is not None for x in samples)
        assert len({x.constitution_hash for x in samples}) == 1
        assert s.query(Critique).count() == 3 and s.query(Comparison).count() == 3
        assert s.query(Pair).count() == summary["pairs"]
        v1 = s.scalar(select(Policy).where(Policy.version == 1))
    store.dispose()
    v1_weights = lora_b(run_dir / v1.adapter_path)
    assert any(t.abs().sum() > 0 for t in v1_weights.values())  # LoRA B starts at zero

    second = runner.invoke(app, ["iterate", "--config", str(tiny_config), "--run-dir", str(run_dir)])
    assert second.exit_code == 0, second.output
    summary = json.loads(runner.invoke(app, ["status", "--run-dir", str(run_dir), "--json"]).stdout)
    assert (summary["iteration"], summary["policy_in"], summary["policy_version"]) == (2, "v1", "v2")
    v2_weights = lora_b(run_dir / "policies" / "v2")
    assert any(not (v2_weights[k] == v1_weights[k]).all() for k in v1_weights)  # trained further from v1
