"""`cai export policy`: a run's policy as a folder that plain `transformers` (merged) or PEFT (adapter) loads and
that answers exactly as the run's base + adapter; the version words, the refusals, and a card that names the
policy's facts and no path of this machine. The run is built by hand on the tiny random model, its adapters
random (non-zero) LoRA weights, so a merge that dropped them would show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.store import EvalMetric, Evaluation, GateDecision, Iteration, Policy, Run
from loop.store.database import open_run_store
from policies.models import base_model_reference
from tests.loop.runs import save_random_adapter

HASH = "c0ffee1234abcdef"
PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is 17 + 25?"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """v1 (iteration 1, evaluated, promoted: current) and v2 (iteration 2, rejected by a gate), from the base."""
    run_dir = tmp_path_factory.mktemp("runs") / "my-run"
    store = open_run_store(run_dir, write=True)
    with store.session() as session:
        run = Run(name="my-run", current_policy=1, config={
            "home": str(run_dir.parent / "home"), "model": {"name": str(tiny_model_dir), "dtype": "float32"}})
        session.add(run)
        session.flush()
        first = Iteration(run_id=run.id, index=1, policy_version=0, constitution_hash=HASH, status="done")
        second = Iteration(run_id=run.id, index=2, policy_version=1, constitution_hash=HASH, status="done")
        session.add_all([first, second])
        session.flush()
        session.add_all([Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None),
                         Policy(run_id=run.id, version=1, parent_version=0, adapter_path="policies/v1",
                                iteration_id=first.id, constitution_hash=HASH, trainer="preference"),
                         Policy(run_id=run.id, version=2, parent_version=1, adapter_path="policies/v2",
                                iteration_id=second.id, constitution_hash=HASH, trainer="preference")])
        evaluation = Evaluation(run_id=run.id, iteration_id=first.id, policy_version=1, previous_version=0,
                                refusal_classifier="lexical", wall_s=1.0)
        session.add(evaluation)
        session.flush()
        session.add_all([EvalMetric(evaluation_id=evaluation.id, name="harmful_safe_rate", value=0.75),
                         EvalMetric(evaluation_id=evaluation.id, name="win_rate_vs_previous", value=0.625),
                         GateDecision(run_id=run.id, iteration_id=first.id, evaluation_id=evaluation.id,
                                      candidate_version=1, current_version=1, outcome="promote", checks=[]),
                         GateDecision(run_id=run.id, iteration_id=second.id, candidate_version=2,
                                      current_version=1, outcome="reject",
                                      checks=[{"passed": False, "reason": "win rate 0.40 < 0.50"}])])
    store.dispose()
    for version in (1, 2):
        save_random_adapter(tiny_model_dir, run_dir / "policies" / f"v{version}", seed=version)
    return run_dir


def _export(run_dir: Path, version: str, out: Path, *extra: str):
    return runner.invoke(app, ["export", "policy", version, "--run-dir", str(run_dir), "--out", str(out), *extra])


def _next_token_logps(model, tokenizer):
    import torch

    rows = []
    with torch.no_grad():
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt").input_ids
            rows.append(torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1))
    return torch.stack(rows)


def _base_with(tiny_model_dir: Path, adapter: Path | None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()


def test_current_exports_the_promoted_policy_merged_and_it_answers_as_base_plus_adapter(run_dir, tiny_model_dir,
                                                                                        tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    result = _export(run_dir, "current", out)
    assert result.exit_code == 0, result.output
    assert f"policy v1 (merged, base {tiny_model_dir.name}) -> {out}" in result.output.replace("\n", "")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md", "cai_export.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("adapter_*")) and not list(tmp_path.glob(".model-*"))  # no staging left behind
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    expected = _next_token_logps(_base_with(tiny_model_dir, run_dir / "policies/v1"), tokenizer)
    got = _next_token_logps(merged, tokenizer)
    assert torch.allclose(got, expected, atol=1e-4)
    # The adapter is not the identity: the export is not just the base.
    assert not torch.allclose(_next_token_logps(_base_with(tiny_model_dir, None), tokenizer), got, atol=1e-4)
    facts = json.loads((out / "cai_export.json").read_text())
    assert facts["policy"] == "v1" and facts["current"] and facts["format"] == "merged"
    assert facts["gate"] == {"outcome": "promote", "reasons": []}
    assert facts["evaluation"]["metrics"] == {"harmful_safe_rate": 0.75, "win_rate_vs_previous": 0.625}


def test_the_adapter_export_loads_onto_the_base_with_peft_and_names_a_resolvable_base(run_dir, tiny_model_dir,
                                                                                      tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    result = _export(run_dir, "v2", out, "--adapter")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                               "cai_export.json"}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir.name
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                       out).eval()
    expected = _next_token_logps(_base_with(tiny_model_dir, run_dir / "policies/v2"), tokenizer)
    assert torch.allclose(_next_token_logps(loaded, tokenizer), expected, atol=1e-4)
    facts = json.loads((out / "cai_export.json").read_text())
    assert (facts["policy"], facts["parent"], facts["iteration"], facts["current"]) == ("v2", "v1", 2, False)
    assert facts["gate"] == {"outcome": "reject", "reasons": ["win rate 0.40 < 0.50"]} and facts["evaluation"] is None
    assert "## Gate decision: reject" in (out / "README.md").read_text()


def test_base_exports_the_base_model_itself(run_dir, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "base"
    assert _export(run_dir, "base", out).exit_code == 0
    exported, base = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) for p in (out, tiny_model_dir))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), base.state_dict().values(),
                                                 strict=True))
    assert json.loads((out / "cai_export.json").read_text())["policy"] == "v0"
    refused = _export(run_dir, "v0", tmp_path / "base-adapter", "--adapter")
    assert refused.exit_code == 2 and "has no adapter" in refused.output


def test_an_unknown_version_is_one_line_listing_the_run_s_versions(run_dir, tmp_path):
    for version, message in (("v9", "no policy v9 in this run (it has v0, v1, v2; `current` is v1)"),
                             ("latest", "not a policy version: 'latest' (expected current, base, N or vN")):
        result = _export(run_dir, version, tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert message in result.output.replace("\n", " ") and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    missing = _export(tmp_path / "no-run", "current", tmp_path / "out")
    assert missing.exit_code == 2 and "no run in" in missing.output


def test_a_non_empty_out_is_refused_without_force_and_replaced_with_it(run_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused = _export(run_dir, "1", out, "--adapter")
    assert refused.exit_code == 2 and "is not empty; add --force" in refused.output
    assert (out / "mine.txt").read_text() == "keep me"
    assert _export(run_dir, "1", out, "--adapter", "--force").exit_code == 0
    assert not (out / "mine.txt").exists() and (out / "adapter_model.safetensors").is_file()
    into_run = _export(run_dir, "1", run_dir.parent, "--adapter", "--force")
    assert into_run.exit_code == 2 and "holds the run folder" in into_run.output


def test_the_card_and_facts_name_version_and_constitution_and_no_path_of_this_machine(run_dir, tiny_model_dir,
                                                                                     tmp_path):
    out = tmp_path / "model"
    assert _export(run_dir, "v1", out).exit_code == 0
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_model_dir.name}\nlibrary_name: transformers\n")
    for text in ("# my-run: policy v1", "| policy | `v1 (current)` |", "| parent | `v0` |", "| iteration | `1` |",
                 f"| constitution hash | `{HASH}` |", "| harmful_safe_rate | 0.75 |", "## Gate decision: promote",
                 'AutoModelForCausalLM.from_pretrained("model")'):
        assert text in card, text
    facts = json.loads((out / "cai_export.json").read_text())
    assert (facts["run"], facts["policy"], facts["constitution_hash"], facts["trainer"]) == \
        ("my-run", "v1", HASH, "preference")
    for path in out.iterdir():
        if path.suffix in (".json", ".md", ".jinja", ".txt"):
            text = path.read_text()
            for absolute in (str(tmp_path), str(run_dir), str(tiny_model_dir), str(Path.home())):
                assert absolute not in text, (path.name, absolute)


def test_a_built_in_base_is_named_by_its_hub_repository():
    assert base_model_reference("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_reference("/models/my-base/") == "my-base"
