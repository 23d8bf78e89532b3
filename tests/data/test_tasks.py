"""The verifiable task sets under data/tasks/: shape, sizes and ids, tasks that load and can be met, and splits kept
apart (no arithmetic template and no format request shared, nor any format request that paraphrases a prompt of
the pool, the evaluation sets or the other split)."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest

from loop.prompts import PromptRecord, load_prompts
from rewards.task_spec import TaskSpec
from rewards.tasks import check_answer, check_constraint
from tests.data.near_duplicates import Prompt, overlaps_between, overlaps_within
from tests.data.test_datasets import eval_prompts, pool_prompts

TASK_DIR = Path(__file__).resolve().parents[2] / "data" / "tasks"
# file -> (minimum records, id prefix)
SETS = {
    "arithmetic.jsonl": (160, "task-arith-"),
    "arithmetic.heldout.jsonl": (80, "task-arith-heldout-"),
    "format.jsonl": (120, "task-format-"),
    "format.heldout.jsonl": (60, "task-format-heldout-"),
}
SPLITS = [("arithmetic.jsonl", "arithmetic.heldout.jsonl"), ("format.jsonl", "format.heldout.jsonl")]

ANSWER_INSTRUCTIONS = ("Give the final answer on a line 'Answer: N'.", "End with a line of the form 'Answer: N'.",
                       "Finish with 'Answer: N', where N is the number.",
                       "Put the result on its own line as 'Answer: N'.")
# How the format prompts state each constraint, after the request, in the order of `task.constraints`.
STATEMENTS = {
    "max_words": ("Answer in at most {value} words.", "Use no more than {value} words.",
                  "Keep it to {value} words or fewer."),
    "min_words": ("Write at least {value} words.", "Use {value} words or more."),
    "max_sentences": ("Answer in at most {value} sentences.", "Use no more than {value} sentences."),
    "lowercase": ("Write everything in lowercase letters.", "Use only lowercase letters, with no capitals at all."),
    "keyword": ('Include the word "{value}" somewhere in your answer.',
                'Make sure the word "{value}" appears in your answer.'),
    "ends_with": ('End your answer with the exact phrase "{value}"', 'Finish with the exact words "{value}"'),
    "bullets": ('Format the answer as exactly {value} bullet points, each on its own line starting with "- ".',
                "Give exactly {value} markdown bullet points."),
    "json_keys": ("Reply with only a JSON object that has the keys {value}.",),
    "no_commas": ("Do not use any commas.", "Avoid commas entirely."),
}
# Words that would state a constraint; the request itself must not use them (so it states no other).
CONSTRAINT_WORDS = re.compile(r"\b(words?|sentences?|lowercase|capitals?|bullets?|json|commas?|phrase|answer:)",
                              re.IGNORECASE)


def records(name: str) -> list[PromptRecord]:
    return load_prompts([TASK_DIR / name])


def tasks(name: str) -> list[TaskSpec]:
    found = [r.task for r in records(name)]
    assert all(found), f"{name}: a record without a task"
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("name", SETS)
def test_size_ids_category_and_every_record_has_a_task(name):
    minimum, prefix = SETS[name]
    found = records(name)
    assert len(found) >= minimum
    assert all(r.id.startswith(prefix) for r in found)
    if "heldout" not in name:
        assert not [r.id for r in found if r.id.startswith(prefix + "heldout-")]
    assert {r.category for r in found} == {"benign"}
    assert all(r.task is not None and r.prompt == r.prompt.strip() for r in found)
    # The JSONL shape of data/prompts/: these four keys and nothing else.
    lines = (TASK_DIR / name).read_text(encoding="utf-8").splitlines()
    assert all(set(json.loads(line)) == {"id", "category", "prompt", "task"} for line in lines if line.strip())


def test_all_task_sets_load_together_with_unique_ids_and_prompts():
    found = load_prompts([TASK_DIR / name for name in SETS])
    assert len({r.prompt for r in found}) == len(found)


@pytest.mark.parametrize("name", ["arithmetic.jsonl", "arithmetic.heldout.jsonl"])
def test_arithmetic_answers_are_non_negative_integers_and_read_back(name):
    for record in records(name):
        answer = record.task.answer
        assert record.task.constraints == () and answer is not None and answer >= 0 and answer == int(answer)
        stated = [i for i in ANSWER_INSTRUCTIONS if i in record.prompt]
        assert "Answer:" not in record.prompt or (stated and record.prompt.endswith(stated[0])), record.id
        numbers = " ".join(re.findall(r"\d+", record.prompt))
        # An answer as instructed, after working that repeats the prompt's numbers; and a plain closing sentence.
        assert check_answer(f"Working: {numbers} ... 99 in between.\nAnswer: {int(answer)}", answer), record.id
        assert check_answer(f"From {numbers}, the total comes to {int(answer)}.", answer), record.id


def skeleton(prompt: str) -> str:
    """The template a word problem was written from: the instruction dropped, numbers and names blanked."""
    for instruction in ANSWER_INSTRUCTIONS:
        prompt = prompt.removesuffix(" " + instruction)
    return re.sub(r"\b[A-Z]\w*", "X", re.sub(r"\d+", "#", prompt))


def test_arithmetic_splits_share_no_template_and_each_has_many():
    train = {skeleton(r.prompt) for r in records("arithmetic.jsonl")}
    held = {skeleton(r.prompt) for r in records("arithmetic.heldout.jsonl")}
    assert not train & held, sorted(train & held)
    assert len(train) >= 20 and len(held) >= 10


def request_of(record: PromptRecord) -> str:
    """The request a format prompt makes: the prompt less the statements of its constraints, which must follow
    it, one per constraint, in the order of `task.constraints`."""
    statements = []
    for constraint in record.task.constraints:
        value = getattr(constraint, "value", None)
        if constraint.kind == "json_keys":
            keys = [f'"{key}"' for key in value]
            value = ", ".join(keys[:-1]) + " and " + keys[-1]
        found = [s for s in (t.format(value=value) for t in STATEMENTS[constraint.kind]) if s in record.prompt]
        assert len(found) == 1, f"{record.id}: {constraint.name} is not stated once ({found})"
        statements.append(found[0])
    tail = " ".join(statements)
    assert record.prompt.endswith(" " + tail), f"{record.id}: the statements do not close the prompt in order"
    request = record.prompt.removesuffix(" " + tail)
    assert not CONSTRAINT_WORDS.search(request), f"{record.id}: the request states a constraint: {request!r}"
    return request


def format_requests(name: str) -> list[Prompt]:
    return [Prompt(f"data/tasks/{name} {r.id}", request_of(r)) for r in records(name)]


@pytest.mark.parametrize("name", ["format.jsonl", "format.heldout.jsonl"])
def test_format_prompts_state_exactly_their_constraints(name):
    found = records(name)
    assert all(1 <= len(r.task.constraints) <= 2 and r.task.answer is None for r in found)
    assert len(format_requests(name)) == len(found)


def test_no_format_request_repeats_or_paraphrases_another_or_any_shipped_prompt():
    train, held = format_requests("format.jsonl"), format_requests("format.heldout.jsonl")
    overlaps = [*overlaps_between(held, train), *overlaps_within([*train, *held]),
                *overlaps_between([*train, *held], [*pool_prompts(), *eval_prompts()])]
    assert not overlaps, "\n".join(map(str, overlaps))


@pytest.mark.parametrize(("train", "held"), SPLITS)
def test_no_prompt_is_shared_between_splits(train, held):
    assert not {r.prompt for r in records(train)} & {r.prompt for r in records(held)}


def witness(task: TaskSpec) -> str | None:
    """A response that meets every constraint of `task` (found by trying lengths), or None: the constraints
    cannot all be met (a JSON object without commas, an ending in capitals under lowercase, ...)."""
    by_kind = {c.kind: c for c in task.constraints}
    keyword = [by_kind["keyword"].value] if "keyword" in by_kind else []
    for length in (1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200):
        filler = keyword + ["fine"] * max(length - len(keyword), 0)
        if "json_keys" in by_kind:
            keys = by_kind["json_keys"].value
            text = json.dumps({key: " ".join(filler) if i == 0 else "x" for i, key in enumerate(keys)})
        elif "bullets" in by_kind:
            count = by_kind["bullets"].value
            text = "\n".join("- " + " ".join(filler[i::count] or ["fine"]) for i in range(count))
        else:
            text = " ".join(filler) + "."
        if "ends_with" in by_kind:
            text += "\n" + by_kind["ends_with"].value
        if "lowercase" in by_kind:
            text = text.lower()
        if all(check_constraint(c, text) for c in task.constraints):
            return text
    return None


@pytest.mark.parametrize("name", ["format.jsonl", "format.heldout.jsonl"])
def test_every_format_task_can_be_met(name):
    unmet = [r.id for r in records(name) if witness(r.task) is None]
    assert not unmet, f"constraints that cannot all be met: {unmet}"


def test_the_witness_finds_no_response_to_contradictory_constraints():
    contradictory = [[{"kind": "json_keys", "value": ["a", "b"]}, {"kind": "no_commas"}],
                     [{"kind": "lowercase"}, {"kind": "ends_with", "value": "Enjoy!"}],
                     [{"kind": "min_words", "value": 50}, {"kind": "max_words", "value": 40}],
                     [{"kind": "bullets", "value": 5}, {"kind": "max_sentences", "value": 3}]]
    for constraints in contradictory:
        assert witness(TaskSpec.model_validate({"constraints": constraints})) is None, constraints


def test_ids_are_numbered_in_order():
    for name in SETS:
        numbers = [int(r.id.rsplit("-", 1)[1]) for r in records(name)]
        assert all(b == a + 1 for a, b in pairwise(numbers)) and numbers[0] == 1, name
