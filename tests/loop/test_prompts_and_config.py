import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loop.config import ConfigError, load_run_config
from loop.prompts import PromptFileError, load_prompts, select_prompts

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "data" / "prompts").glob("*.jsonl"))


def test_shipped_prompts_cover_harmful_benign_and_risky_sounding_benign():
    records = load_prompts(SHIPPED)
    assert len(records) >= 60
    categories = Counter(r.category for r in records)
    assert categories["harmful"] >= 20 and categories["benign"] >= 15 and categories["borderline"] >= 15


def test_bad_prompt_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n\n{not json}\n")
    with pytest.raises(PromptFileError, match=rf"^{bad}:3: invalid JSON"):
        load_prompts([bad])
    bad.write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(PromptFileError, match=rf"^{bad}:1: prompt: Field required"):
        load_prompts([bad])
    bad.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n" + json.dumps({"id": "a", "prompt": "y"}) + "\n")
    with pytest.raises(PromptFileError, match=rf"^{bad}:2: duplicate prompt id 'a' \(first at {bad}:1\)"):
        load_prompts([bad])


def test_a_prompt_may_carry_a_verifiable_task_and_a_broken_one_names_the_field(tmp_path):
    path = tmp_path / "tasks.jsonl"
    lines = [{"id": "a", "prompt": "What is 5 + 7?", "task": {"answer": 12}},
             {"id": "b", "prompt": "Describe rain in at most 40 words.",
              "task": {"constraints": [{"kind": "max_words", "value": 40}]}},
             {"id": "c", "prompt": "Hello."}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    answer, constrained, plain = load_prompts([path])
    assert answer.task.answer == 12 and not answer.task.constraints
    assert [c.name for c in constrained.task.constraints] == ["max_words<=40"]
    assert plain.task is None
    broken = {
        '{"kind": "max_words", "value": "forty"}': r"task\.constraints\.0\.max_words\.value: Input should be a valid",
        '{"kind": "shouting"}': r"task\.constraints\.0: Input tag 'shouting' found using 'kind' does not match",
        '{"kind": "lowercase", "value": true}': r"task\.constraints\.0\.lowercase\.value: Extra inputs",
    }
    for constraint, error in broken.items():
        path.write_text(f'{{"id": "a", "prompt": "x", "task": {{"constraints": [{constraint}]}}}}\n')
        with pytest.raises(PromptFileError, match=rf"^{path}:1: {error}"):
            load_prompts([path])
    path.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n" + json.dumps({"id": "b", "prompt": "y", "task": {}}))
    with pytest.raises(PromptFileError, match=rf"^{path}:2: task: a task needs an answer or at least"):
        load_prompts([path])


def test_prompt_selection_is_reproducible_and_varies_by_iteration():
    pool = load_prompts(SHIPPED)
    first = select_prompts(pool, 10, seed=0, iteration=1)
    assert first == select_prompts(pool, 10, seed=0, iteration=1)
    assert first != select_prompts(pool, 10, seed=0, iteration=2)
    assert len(select_prompts(pool[:3], 10, seed=0, iteration=1)) == 3


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 400), seed=st.integers(0, 10**6), iteration=st.integers(1, 50))
def test_twin_draws_bring_each_twinned_prompt_with_its_look_alike(count, seed, iteration):
    pool = load_prompts(SHIPPED)
    drawn = select_prompts(pool, count, seed, iteration, draw="twins")
    assert drawn == select_prompts(pool, count, seed, iteration, draw="twins")
    ids = [r.id for r in drawn]
    assert len(ids) == len(set(ids)) == min(count, len(pool))
    if count < len(pool):
        twinned = [r for r in drawn if r.twin]
        assert all(r.twin in ids for r in twinned)  # none comes without its look-alike
        assert len(twinned) >= min(count // 2, 60)  # pairs fill the draw while the pool has enough
        harmful = Counter(r.category for r in drawn)["harmful"]
        assert harmful >= min(count // 2, 60)


def test_quickstart_config_resolves_paths_against_its_folder(monkeypatch):
    monkeypatch.setenv("CAI_HOME", "/tmp/somewhere")
    config = load_run_config(ROOT / "configs" / "quickstart.yaml")
    assert config.home == Path("/tmp/somewhere")
    assert all(f.is_file() for f in config.prompts.files)
    assert config.constitution == "default"


def test_environment_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("CAI_TRAIN__PREFERENCE__BETA", "0.25")
    assert load_run_config(ROOT / "configs" / "quickstart.yaml").train.preference.beta == 0.25


def test_config_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompts:\n  files: [a.jsonl]\njudge:\n  margin: 0.9\n  typo: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_run_config(path)
    message = str(caught.value)
    # One line for the file, naming every wrong field.
    assert message.startswith(f"{path}: judge.margin:") and "; judge.typo:" in message and "\n" not in message
