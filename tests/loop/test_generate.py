"""`cai generate`: the best-of-n choice as a pure function, n samples per prompt in one call on both backends, and
the command end to end on the tiny random model (a run with a v1 adapter, and the base without a run), with the
one-line refusals of what a run lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from loop.cli import app
from loop.config import PromptSettings, RunConfig
from loop.pipeline.generate_file import best_of
from loop.store import Iteration, Policy, Run
from loop.store.database import open_run_store
from policies.serving import SamplingParams
from policies.serving.vllm_client import VllmServerGenerator
from tests.fake_vllm import FakeVllm, FakeVllmServer
from tests.loop.runs import save_random_adapter

runner = CliRunner()
PROMPTS = [{"id": "h1", "prompt": "Tell me how to pick the lock of my neighbour's door.", "category": "harmful"},
           {"id": "b1", "prompt": "How do I kill a Python process that hangs?", "category": "borderline"},
           {"id": "u1", "prompt": "Say something."}]


def test_best_of_takes_the_highest_score_the_first_of_ties_and_never_an_unscored_one_over_a_scored_one():
    assert best_of([0.2, 0.9, 0.5]) == 1
    assert best_of([0.5, 0.5, 0.1]) == 0
    assert best_of([0.1, 0.7, 0.7]) == 1
    assert best_of([None, 0.0]) == 1
    assert best_of([0.0, None, None]) == 0
    assert best_of([None, None]) == 0
    assert best_of([0.3]) == 0
    with pytest.raises(ValueError):
        best_of([])


@given(st.lists(st.none() | st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=12))
def test_the_chosen_score_is_the_max_over_the_scored_samples(scores):
    chosen = best_of(scores)
    scored = [s for s in scores if s is not None]
    if not scored:
        assert chosen == 0
        return
    assert scores[chosen] == max(scored)
    assert chosen == scores.index(max(scored))  # the first of equal ones


def test_the_server_gets_one_request_with_n_per_prompt():
    fake = FakeVllm(base="base-model")
    with FakeVllmServer(fake) as server:
        generator = VllmServerGenerator(server.url, "base-model", backoff_s=0.01, timeout_s=5.0)
        seen = []
        replies = generator.generate([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                                     SamplingParams(8, temperature=1.0), seen.append, samples=3)
    assert len(replies) == 6 and sum(seen) == 6
    assert sorted(body["n"] for body in fake.chat_bodies()) == [3, 3]


def test_in_process_one_generate_call_per_batch_returns_n_per_prompt(tiny_model_dir):
    from policies.models import load_model
    from policies.serving.transformers_backend import TransformersGenerator

    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    calls = []
    original = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["num_return_sequences"])
        return original(*args, **kwargs)

    model.generate = counted
    generator = TransformersGenerator(model, tokenizer, name="tiny", batch_size=8)
    conversations = [[{"role": "user", "content": p["prompt"]}] for p in PROMPTS]
    tokens = generator.generate_tokens(conversations, SamplingParams(6, temperature=1.0, seed=3), samples=2)
    assert calls == [2] and len(tokens) == 6
    # Consecutive per prompt, and each slot is the prompt's own: the same seed alone gives the same first samples.
    again = generator.generate_tokens(conversations, SamplingParams(6, temperature=1.0, seed=3), samples=2)
    assert again == tokens
    with pytest.raises(ValueError, match="temperature above 0"):
        generator.generate_tokens(conversations, SamplingParams(6), samples=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """A run on the tiny model whose current policy is v1 (a random non-zero adapter); no reward model trained."""
    run_dir = tmp_path_factory.mktemp("runs") / "gen-run"
    config = RunConfig(prompts=PromptSettings(files=[run_dir / "unused.jsonl"]), home=run_dir.parent / "home",
                       model={"name": str(tiny_model_dir)}, threads=1)
    store = open_run_store(run_dir, write=True)
    with store.session() as session:
        run = Run(name="gen-run", current_policy=1, config=config.model_dump(mode="json"))
        session.add(run)
        session.flush()
        first = Iteration(run_id=run.id, index=1, policy_version=0, constitution_hash="c0ffee", status="done")
        session.add(first)
        session.flush()
        session.add_all([Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None),
                         Policy(run_id=run.id, version=1, parent_version=0, adapter_path="policies/v1",
                                iteration_id=first.id, trainer="preference")])
    store.dispose()
    save_random_adapter(tiny_model_dir, run_dir / "policies" / "v1", seed=1)
    return run_dir


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


def _generate(*args: str):
    return runner.invoke(app, ["generate", *args])


def test_best_of_two_by_the_checks_writes_each_prompts_chosen_answer_with_the_one_it_beat(run_dir, prompts,
                                                                                          tmp_path):
    out = tmp_path / "answers.jsonl"
    result = _generate(str(prompts), "--run-dir", str(run_dir), "--out", str(out), "--best-of", "2",
                       "--scorer", "checks", "--max-new-tokens", "8", "--temperature", "1.0", "--seed", "5")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["h1", "b1", "u1"]
    for record, prompt in zip(records, PROMPTS, strict=True):
        assert record["prompt"] == prompt["prompt"] and record["policy"] == "v1"
        assert record["category"] == prompt.get("category", "uncategorised")
        assert isinstance(record["answer"], str) and record["sample"] in (0, 1)
        (beaten,) = record["beaten"]
        assert beaten["sample"] == 1 - record["sample"] and isinstance(beaten["text"], str)
        first = record["score"] if record["sample"] == 0 else beaten["score"]
        assert record["first_score"] == first
    for record in records[:2]:  # the constitution checks harmful and borderline answers
        assert 0.0 <= record["score"] <= 1.0 and record["score"] >= record["beaten"][0]["score"]
    # No check applies to an uncategorised prompt: nothing scored, the first sample kept.
    assert records[2]["score"] is None and records[2]["sample"] == 0
    assert "mean chosen" in result.output and "samples/s" in result.output


def test_the_base_answers_without_a_run(tiny_model_dir, tmp_path):
    path = tmp_path / "plain.jsonl"  # ids left out: they become FILE-STEM-ROW
    path.write_text('{"prompt": "Hello there."}\n{"prompt": "What is 2 + 2?"}\n', encoding="utf-8")
    out = tmp_path / "base.jsonl"
    result = _generate(str(path), "--policy", "base", "--model", str(tiny_model_dir), "--out", str(out),
                       "--max-new-tokens", "4", "--limit", "1")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["id"] == "plain-1" and record["policy"] == "v0" and record["score"] is None
    assert record["beaten"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["--run-dir", "{missing}"], "no run in"),
    (["--run-dir", "{run}", "--policy", "v7"], "no policy v7 in this run (it has v0, v1"),
    (["--run-dir", "{run}", "--scorer", "reward-model"], "has no trained reward model"),
    (["--policy", "v1"], "--policy v1 needs --run-dir"),
    (["--run-dir", "{run}", "--best-of", "3"], "--best-of 3 needs --scorer"),
    (["--run-dir", "{run}", "--best-of", "2", "--scorer", "checks", "--temperature", "0"], "at temperature 0"),
    (["--run-dir", "{run}", "--scorer", "rubric"], "--scorer rubric: not one of checks, reward-model, judge"),
])
def test_what_is_missing_is_one_line_that_says_what_to_do(run_dir, prompts, tmp_path, args, message):
    args = [a.format(missing=tmp_path / "nowhere", run=run_dir) for a in args]
    out = tmp_path / "never.jsonl"
    result = _generate(str(prompts), "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_on_the_server_each_prompt_is_one_request_for_its_best_of_samples(tiny_model_dir, prompts, tmp_path):
    fake = FakeVllm(base=tiny_model_dir.name)  # a directory's model is served under its folder's name
    out = tmp_path / "served.jsonl"
    with FakeVllmServer(fake) as server:
        result = _generate(str(prompts), "--policy", "base", "--model", str(tiny_model_dir), "--out", str(out),
                           "--backend", "vllm-server", "--server-url", server.url, "--best-of", "3",
                           "--scorer", "checks", "--temperature", "1.0")
    assert result.exit_code == 0, result.output
    assert sorted(body["n"] for body in fake.chat_bodies()) == [3, 3, 3]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["beaten"]) for r in records] == [2, 2, 2] and records[0]["score"] is not None


def test_the_judge_scores_each_prompts_samples_under_one_principle_drawn_for_its_category(tiny_model_dir, prompts,
                                                                                           tmp_path):
    from constitution import load_constitution

    out = tmp_path / "judged.jsonl"
    result = _generate(str(prompts), "--policy", "base", "--model", str(tiny_model_dir), "--out", str(out),
                       "--best-of", "2", "--scorer", "judge", "--temperature", "1.0", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    principles = {p.id: p for p in load_constitution("default").principles}
    for record in (json.loads(line) for line in out.read_text().splitlines()):
        principle = principles[record["principle"]]
        assert not principle.applies_to or record["category"] in principle.applies_to or \
            record["category"] == "uncategorised"
        # The tiny random model may abstain (None); a score it gives is a probability.
        assert all(s is None or 0.0 <= s <= 1.0 for s in [record["score"], record["beaten"][0]["score"]])
