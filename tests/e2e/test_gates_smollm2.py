"""A deliberately bad candidate on the real SmolLM2: an adapter trained to refuse everything is rejected for
over-refusal, and the current policy stays."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli import app
from loop.pipeline.stages import STAGES
from loop.store import EvalResponse, Run
from loop.store.database import open_run_store
from tests.loop.refuser import train_a_refuser

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def config_path(tmp_path, cai_home) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["home"] = str(cai_home)
    config["prompts"]["files"] = [str(ROOT / "data/prompts/benign.jsonl")]
    config["prompts"]["per_iteration"] = 2
    config["prompts"]["draw"] = "random"
    config["pairs"]["source"] = "judged"  # the gate under test does not depend on where the pairs come from
    config["generation"]["max_new_tokens"] = 16
    config["critique"]["max_new_tokens"] = 16
    # The refuser trains with the config's SFT settings; a config only accepts them with the SFT stage on.
    config["train"]["sft_on_revisions"] = True
    config["train"]["sft"] = {"epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "max_length": 128}
    config["evaluation"] = {"per_set": 8, "max_new_tokens": 32, "refusal": {"classifier": "lexical"}}
    # The default gates, except the KL blow-up halt, which a refuse-everything adapter may (rightly) also
    # trigger: this test is about the over-refusal reason.
    config["gates"] = {"halt_kl_reference": None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_refuse_everything_candidate_is_rejected_for_over_refusal(config_path, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=train_a_refuser))
    run_dir = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["iterate", "--config", str(config_path), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "reject" in result.output and "over-refusal" in result.output

    status = runner.invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    summary = json.loads(status.stdout)
    gate = summary["gate"]
    assert (gate["outcome"], gate["candidate"], gate["current_policy"]) == ("reject", "v1", "v0")
    assert any(r.startswith("over-refusal: benign requests refused more often") for r in gate["reasons"])
    metrics = summary["evaluation"]["metrics"]
    assert metrics["benign_refusal_rate"] >= 0.5 > metrics["previous_benign_refusal_rate"]
    store = open_run_store(run_dir, write=True)
    with store.session() as s:
        assert s.scalar(select(Run.current_policy)) == 0
        refusals = [r.refusal for r in s.scalars(select(EvalResponse).where(EvalResponse.policy_version == 1,
                                                                           EvalResponse.eval_set == "helpful"))]
    store.dispose()
    assert sum(refusals) >= len(refusals) // 2  # it refuses ordinary requests too

    monkeypatch.undo()
    again = runner.invoke(app, ["iterate", "--config", str(config_path), "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert json.loads(runner.invoke(app, ["status", "--run-dir", str(run_dir), "--json"]).stdout)["policy_in"] == "v0"
