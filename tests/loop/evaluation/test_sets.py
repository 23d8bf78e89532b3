"""Eval sets from config: a fixed draw per run, user sets, and one clear line for bad input."""

from pathlib import Path

import pytest
import yaml

from loop.config import ConfigError, load_run_config
from loop.evaluation.sets import check_eval_inputs, eval_prompts
from loop.evaluation.settings import SHIPPED_EVAL_DIR, EvaluationSettings
from loop.prompts import PromptFileError

ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_sets_are_the_default_and_big_enough():
    settings = EvaluationSettings(per_set=None)
    assert [s.file for s in settings.sets] == [SHIPPED_EVAL_DIR / f for f in
                                               ("harmful.jsonl", "benign_risky.jsonl", "helpful.jsonl")]
    prompts = eval_prompts(settings, seed=0)
    by_role = {role: sum(p.set.role == role for p in prompts) for role in ("harmful", "benign_risky", "helpful")}
    assert by_role["harmful"] >= 60 and by_role["benign_risky"] >= 60 and by_role["helpful"] >= 40


def test_the_draw_is_fixed_per_seed_and_sized_per_set():
    settings = EvaluationSettings(per_set=5, sets=[
        {"name": "harmful", "file": SHIPPED_EVAL_DIR / "harmful.jsonl", "role": "harmful"},
        {"name": "helpful", "file": SHIPPED_EVAL_DIR / "helpful.jsonl", "role": "helpful", "sample": 3}])
    first = eval_prompts(settings, seed=0)
    assert [p.record.id for p in first] == [p.record.id for p in eval_prompts(settings, seed=0)]
    assert [p.set.name for p in first] == ["harmful"] * 5 + ["helpful"] * 3
    assert [p.record.id for p in first] != [p.record.id for p in eval_prompts(settings, seed=1)]


def test_a_user_set_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "mine.jsonl").write_text('{"id": "m1", "prompt": "How do I sharpen a kitchen knife?"}\n')
    config = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    config["prompts"]["files"] = [str(ROOT / "data/prompts/benign.jsonl")]
    config["evaluation"] = {"sets": [{"name": "mine", "file": "mine.jsonl", "role": "benign_risky"}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_run_config(path)
    assert loaded.evaluation.sets[0].file == tmp_path / "mine.jsonl"
    assert [p.record.id for p in eval_prompts(loaded.evaluation, 0)] == ["m1"]


@pytest.mark.parametrize(("evaluation", "message"), [
    ({"sets": [{"name": "a", "file": "x.jsonl", "role": "harmless"}]}, "evaluation.sets.0.role: Input should be"),
    ({"sets": [{"name": "a", "file": "x.jsonl", "role": "harmful"}, {"name": "a", "file": "y.jsonl",
                                                                   "role": "helpful"}]}, "a repeated"),
    ({"per_set": 0}, "evaluation.per_set: Input should be greater than or equal to 1"),
    ({"refusal": {"classifier": "phrases"}},
     "evaluation.refusal.classifier: Input should be 'auto', 'judge', 'lexical' or 'outcome'"),
])
def test_bad_evaluation_config_is_one_clear_line(tmp_path, evaluation, message):
    config = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    config["evaluation"] = evaluation
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message) as error:
        load_run_config(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_a_bad_eval_line_is_reported_before_any_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "ok", "prompt": "fine"}\n{"id": "broken", "prompt": \n')
    settings = EvaluationSettings(sets=[{"name": "bad", "file": bad, "role": "helpful"}])
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: invalid JSON"):
        check_eval_inputs(settings, 0)
