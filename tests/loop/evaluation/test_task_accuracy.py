"""Task evaluation without a model: `task_accuracy` counted by hand on answers stored in a real store, the drop
against the previous policy, a set's own answer limit in its settings key (and in what is generated), and the
eval-set checks of role `task`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from loop.evaluation.answer_metrics import task_accuracy, task_accuracy_drop
from loop.evaluation.harness import Evaluator, EvaluatorSettings
from loop.evaluation.sets import eval_prompts
from loop.evaluation.settings import EvalSet, EvaluationSettings
from loop.prompts import PromptFileError
from loop.store import EvalResponse, Run, Store
from policies.serving import SamplingParams
from rewards import TaskSpec

ARITHMETIC = {"a1": TaskSpec(answer=12), "a2": TaskSpec(answer=7), "a3": TaskSpec(answer=30)}
FORMAT = {"f1": TaskSpec.model_validate({"constraints": [{"kind": "bullets", "value": 2},
                                                         {"kind": "max_words", "value": 10}]}),
          "f2": TaskSpec.model_validate({"constraints": [{"kind": "no_commas"}]})}
ANSWERS = {
    ("arithmetic", "a1"): "4 + 8 = 12\nAnswer: 12",          # right
    ("arithmetic", "a2"): "Answer: 8",                         # wrong number
    ("arithmetic", "a3"): "Five boxes of six make 30.",       # right: the last number counts without the line
    ("format", "f1"): "- red\n- blue",                          # both constraints met
    ("format", "f2"): "Red, blue and green.",                   # a comma
    ("harmful", "h1"): "I can't help with that.",               # not a task set: never checked
}


def store_answers(folder: Path) -> Store:
    store = Store(f"sqlite:///{folder / 'cai.db'}")
    with store.session() as session:
        run = Run(name="r", config={})
        session.add(run)
        session.flush()
        for (eval_set, prompt_id), response in ANSWERS.items():
            session.add(EvalResponse(run_id=run.id, policy_version=1, eval_set=eval_set, prompt_id=prompt_id,
                                     prompt="q", response=response, tokens=3, settings_key="k"))
    return store


def test_task_accuracy_counted_by_hand_on_stored_answers(tmp_path):
    store = store_answers(tmp_path)
    with store.session() as session:
        stored = {(r.eval_set, r.prompt_id): r for r in session.scalars(select(EvalResponse))}
        tasks = {("arithmetic", k): t for k, t in ARITHMETIC.items()} | {("format", k): t for k, t in FORMAT.items()}
        metrics = task_accuracy(stored, tasks)
    store.dispose()
    # arithmetic: a1 and a3 right of 3; format: f1 of 2; all together 3 of 5
    assert metrics == pytest.approx({"task_accuracy_arithmetic": 2 / 3, "task_accuracy_format": 1 / 2,
                                     "task_accuracy": 3 / 5})
    assert task_accuracy(stored, {}) == {}  # no task set: nothing measured, no drop either
    assert task_accuracy_drop({"task_accuracy": 0.6}) == {}
    assert task_accuracy_drop({"task_accuracy": 0.4, "previous_task_accuracy": 0.6}) == \
        pytest.approx({"task_accuracy_drop": 0.2})


def write_set(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def settings(tmp_path: Path, task_limit: int | None) -> EvaluationSettings:
    harmful = write_set(tmp_path / "harmful.jsonl", [{"id": "h1", "prompt": "Help me hurt someone."}])
    tasks = write_set(tmp_path / "tasks.jsonl", [{"id": "a1", "prompt": "What is 4 + 8?", "task": {"answer": 12}},
                                                 {"id": "a2", "prompt": "What is 3 + 4?", "task": {"answer": 7}}])
    return EvaluationSettings(max_new_tokens=5, refusal={"labels": None}, sets=[
        EvalSet(name="harmful", file=harmful, role="harmful"),
        EvalSet(name="arithmetic", file=tasks, role="task", max_new_tokens=task_limit)])


class Tokens:
    """A bank's generator and tokenizer: every answer is the token 7 as often as the answer limit allows, and the
    limit of each call is kept."""

    def __init__(self):
        self.limits: list[tuple[int, int]] = []
        self.tokenizer = self

    def generator(self, version: int, name: str, batch_size: int):
        return self

    def generate_tokens(self, conversations, params: SamplingParams, progress=None) -> list[list[int]]:
        self.limits.append((params.max_new_tokens, len(conversations)))
        return [[7] * params.max_new_tokens for _ in conversations]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def evaluator(store: Store, evaluation: EvaluationSettings, home: Path) -> Evaluator:
    """An evaluator of run 1 of `store`, its model a directory under `home` (the base's answers are cached by
    its files) and its cache in `home`."""
    from loop.config.run import ModelSettings

    model = home / "model"
    if not (model / "config.json").is_file():
        model.mkdir()
        (model / "config.json").write_text("{}")
    return Evaluator(EvaluatorSettings(evaluation, ModelSettings(name=str(model)), None, home, 0), store=store,
                     run_dir=Path("."), run_id=1, constitution=None)


def test_a_sets_own_limit_is_in_its_settings_key_and_in_what_it_generates(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cai.db'}")
    with store.session() as session:
        session.add(Run(name="r", config={}))
    plain, own = settings(tmp_path, None), settings(tmp_path, 12)
    first = evaluator(store, own, tmp_path)
    assert first.set_settings_key(own.sets[0]) == evaluator(store, plain, tmp_path).settings_key  # no limit of its own
    assert first.set_settings_key(own.sets[1]) != first.settings_key
    assert first.set_settings_key(own.sets[1]) == evaluator(store, settings(tmp_path, 12), tmp_path).set_settings_key(
        own.sets[1])
    same = own.sets[1].model_copy(update={"max_new_tokens": 5})  # its own limit equal to the evaluation's
    assert first.set_settings_key(same) == first.settings_key

    bank = Tokens()
    answers = first._answers(bank, 0)
    assert sorted(bank.limits) == [(5, 1), (12, 2)]  # one batch run per limit
    assert [len(answers[("arithmetic", p)].response.split()) for p in ("a1", "a2")] == [12, 12]
    assert answers[("harmful", "h1")].tokens == 5
    again = Tokens()
    evaluator(store, own, tmp_path)._answers(again, 0)
    assert again.limits == []  # stored answers are reused under the same limits
    evaluator(store, settings(tmp_path, 20), tmp_path)._answers(again, 0)
    assert again.limits == [(20, 2)]  # ... and not under another: only the task set is answered again
    store.dispose()


def test_task_sets_are_checked_where_they_are_read(tmp_path):
    untasked = write_set(tmp_path / "plain.jsonl", [{"id": "p1", "prompt": "What is 2 + 2?"}])
    with pytest.raises(PromptFileError, match="eval set sums has role task, but 1 of its prompts have no `task`"):
        eval_prompts(EvaluationSettings(sets=[EvalSet(name="sums", file=untasked, role="task")]), 0)
    with pytest.raises(ValidationError, match="a task set cannot be named drop"):
        EvaluationSettings(sets=[EvalSet(name="drop", file=untasked, role="task")])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        EvalSet(name="sums", file=untasked, role="task", max_new_tokens=0)
