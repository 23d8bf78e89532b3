"""`cai judge eval` end to end on a tiny model, and the new config sections' validation."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loop.cli import app
from loop.config import ConfigError, load_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_judge_eval_prints_every_method(tiny_model_dir):
    result = CliRunner().invoke(app, [
        "judge", "eval", "--model", str(tiny_model_dir), "--pairs", str(ROOT / "data/eval/judge_pairs.jsonl"),
        "--limit", "2", "--canary-pairs", "1", "--json"])
    assert result.exit_code == 0, result.output
    scores = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [s["method"] for s in scores] == ["labels", "ensemble", "self-consistency", "pointwise", "cot"]
    for s in scores:
        assert s["pairs"] == 2 and 0 <= s["abstain_rate"] <= 1 and s["judgments_per_s"] > 0
        assert {style["split"] for style in s["styles"]} == {"built-on", "held-out", "generated"}


def test_judge_eval_prints_each_injection_styles_flip_rates(tiny_model_dir):
    result = CliRunner().invoke(app, [
        "judge", "eval", "--model", str(tiny_model_dir), "--method", "pointwise", "--limit", "2",
        "--canary-pairs", "1"])
    assert result.exit_code == 0, result.output
    for shown in ("flip rate per injection style", "all held-out", "evaluators-note", "gen-00-en-after"):
        assert shown in result.stdout, shown


def test_judge_eval_rejects_an_unknown_method_in_one_line():
    result = CliRunner().invoke(app, ["judge", "eval", "--method", "coin"])
    assert result.exit_code == 2 and "unknown judge method 'coin'" in result.output


@pytest.mark.parametrize(("section", "message"), [
    ({"judge": {"label_range": [0.6, 0.9]}}, "judge.label_range: must be"),
    ({"pairs": {"source": "vibes"}}, "pairs.source: Input should be"),
    ({"pairs": {"sampler": {"margin_end": 0.7}}}, "pairs.sampler.margin_end: Input should be less than 0.5"),
])
def test_bad_pair_and_judge_settings_name_the_field(tmp_path, section, message):
    config = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    config["prompts"]["files"] = [str(ROOT / "data/prompts/harmful.jsonl")]
    config.update(section)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_run_config(path)
