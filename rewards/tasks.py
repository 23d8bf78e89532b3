"""The `task` reward kind: a response checked exactly against its prompt's `TaskSpec`, with no model, so a
trainer can be rewarded for what is verifiably right (the number, the format) rather than for what a judge likes.

One component per verifiable part: `answer` and each constraint by its `name`, 1.0 met and 0.0 not. The checkers
are pure functions of the response. An answer with no words meets no constraint: the empty answer would otherwise
pass every `max_*`, `lowercase` and `no_commas` constraint for free.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewards.base import Component, RewardContext, Scored, register_reward_kind
from rewards.settings import RewardComponentSettings, RewardSettings
from rewards.task_spec import (
    Bullets,
    Constraint,
    EndsWith,
    JsonKeys,
    Keyword,
    Lowercase,
    MaxSentences,
    MaxWords,
    MinWords,
    NoCommas,
    TaskSpec,
)

if TYPE_CHECKING:
    from policies.serving import Progress

log = logging.getLogger(__name__)

ANSWER_TOLERANCE = 1e-6

# "Answer: 12", also "**Final answer:** 12" and "> answer: 12".
_ANSWER_LINE = re.compile(r"^[\s>*_#-]*(?:final\s+)?answer[\s*_]*:[\s*_]*(?P<rest>.*)$", re.IGNORECASE | re.MULTILINE)
# A number not glued to a word or a preceding "." ("v2", "x.5"): an optional sign and currency sign, thousands
# separators in groups of three ("1,234"; "1,2,3" is three numbers), an optional fraction.
_NUMBER = re.compile(r"(?<![\w.])(?P<sign>[-\u2212])?[$€£]?(?P<whole>\d{1,3}(?:,\d{3})+|\d+)(?P<fraction>\.\d+)?(?!\d)")
_BULLET_LINE = re.compile(r"^\s*[-*] +\S", re.MULTILINE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(?P<body>.*)\n[ \t]*```$", re.IGNORECASE | re.DOTALL)


def _numbers(text: str) -> list[float]:
    return [float(("-" if m["sign"] else "") + m["whole"].replace(",", "") + (m["fraction"] or ""))
            for m in _NUMBER.finditer(text)]


def extract_number(response: str) -> float | None:
    """The number a response answers with: the first number on its last `Answer:` line that holds one, else its
    last number; None when it has none."""
    for line in reversed(list(_ANSWER_LINE.finditer(response))):
        if found := _numbers(line["rest"]):
            return found[0]
    found = _numbers(response)
    return found[-1] if found else None


def check_answer(response: str, expected: float) -> bool:
    found = extract_number(response)
    return found is not None and abs(found - expected) < ANSWER_TOLERANCE


def words(text: str) -> list[str]:
    """Whitespace-separated tokens holding a letter or digit (a bullet's "-" or a lone "—" is not a word)."""
    return [token for token in text.split() if any(ch.isalnum() for ch in token)]


def sentences(text: str) -> list[str]:
    """Pieces ending in ".", "!" or "?" before a space, or at a line break (so each bullet line is one)."""
    return [piece for piece in _SENTENCE_BREAK.split(text) if any(ch.isalnum() for ch in piece)]


def _json_object(response: str) -> dict | None:
    text = response.strip()
    if fenced := _JSON_FENCE.match(text):
        text = fenced["body"]
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _has_keyword(response: str, keyword: str) -> bool:
    # Word boundaries by hand: `\b` fails a keyword that starts or ends with a non-word character ("c++").
    pattern = rf"(?<!\w){re.escape(keyword.strip())}(?!\w)"
    return re.search(pattern, response, re.IGNORECASE) is not None


def check_constraint(constraint: Constraint, response: str) -> bool:
    """Does `response` meet `constraint`? (False for a response with no words; see the module docstring.)"""
    if not words(response):
        return False
    match constraint:
        case MaxWords(value=limit):
            return len(words(response)) <= limit
        case MinWords(value=least):
            return len(words(response)) >= least
        case MaxSentences(value=limit):
            return len(sentences(response)) <= limit
        case Lowercase():
            return response == response.lower()
        case Keyword(value=keyword):
            return _has_keyword(response, keyword)
        case EndsWith(value=ending):
            return response.rstrip().endswith(ending.strip())
        case Bullets(value=count):
            return len(_BULLET_LINE.findall(response)) == count
        case JsonKeys(value=keys):
            found = _json_object(response)
            return found is not None and all(key in found for key in keys)
        case NoCommas():
            return "," not in response
    raise TypeError(f"no checker for constraint {constraint!r}")


def _parts(task: TaskSpec) -> list[tuple[str, Callable[[str], bool]]]:
    """(component name, checker of a response) for each verifiable part of the task."""
    parts: list[tuple[str, Callable[[str], bool]]] = []
    if task.answer is not None:
        expected = task.answer
        parts.append(("answer", lambda response: check_answer(response, expected)))
    for constraint in task.constraints:
        parts.append((constraint.name, lambda response, c=constraint: check_constraint(c, response)))
    return parts


def meets_task(response: str, task: TaskSpec) -> bool:
    """Whether `response` meets every verifiable part of `task`: its answer and each of its constraints (what the
    evaluation counts as a correct answer, `task_accuracy`)."""
    return all(check(response) for _, check in _parts(task))


@dataclass(frozen=True)
class TaskReward:
    kind: str = "task"

    def _component(self, name: str, check: Callable[[str], bool], item: Scored) -> Component:
        try:
            return Component(self.kind, name, float(check(item.response)))
        except Exception:  # a broken checker is "cannot score" for this part, never a failed scoring batch
            log.warning("task check %s raised on a response to %r; it cannot score", name, item.prompt[:80],
                        exc_info=True)
            return Component(self.kind, name, None)

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[list[Component]]:
        scored = [[self._component(name, check, item) for name, check in _parts(item.task)] if item.task else []
                  for item in items]
        if progress:
            progress(len(items))
        return scored


@register_reward_kind("task")
def build_task(component: RewardComponentSettings, settings: RewardSettings, context: RewardContext) -> TaskReward:
    return TaskReward()
