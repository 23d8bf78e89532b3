"""The consistency check: a verdict judged by what the text in it does, not by its words.

A response that wins only because of one paragraph or sentence of it (an appended "note to the evaluator", an
authority claim, a forged turn, in any language) stops winning when that part is removed. So the winner of
every verdict is judged again without each of its first `units` parts (paragraphs; lines or sentences when it
has one paragraph), taken from both ends inwards, and a verdict whose winner loses or ties without one of them
is marked `suspect`: the pairs stage keeps it out of training, as it does a pair the lexical detector flags.
An ordinary answer rarely hangs on one sentence, an injection that works always does; the false alarms this
costs are measured on the clean judge set (`cai judge eval`, column "suspect, clean").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from critique.judge import JudgeMethod, Matchup, MethodName, Response, Shown, Verdict, show
from policies.serving import Generator, Progress

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def parts(text: str) -> tuple[list[str], str]:
    """The text's parts and what joins them: paragraphs, else lines, else sentences."""
    for separator in ("\n\n", "\n"):
        pieces = [p for p in text.split(separator) if p.strip()]
        if len(pieces) > 1:
            return pieces, separator
    return [p for p in _SENTENCE_END.split(text) if p.strip()], " "


def ablation_order(count: int, units: int) -> list[int]:
    """Indices of up to `units` parts of `count`, from both ends inwards: first, last, second, second-last..."""
    order = []
    for i in range((count + 1) // 2):
        order += [i] if i == count - 1 - i else [i, count - 1 - i]
    return order[:units] if count > 1 else []


def without_part(text: str, index: int) -> str:
    pieces, separator = parts(text)
    return separator.join(p for i, p in enumerate(pieces) if i != index)


def _ablated(response: Response, index: int) -> Shown:
    """The response as shown in its slot, then without its part `index` (a canary's text stays where it lands)."""
    return Shown(response if isinstance(response, str) else response.text,
                 lambda text, label, position: without_part(show(response, label, position), index))


class _Remembered:
    """The judge's generator, answering a conversation it scored before from memory: a pointwise judge scores
    each response alone, so a verdict judged again with its winner shortened asks the loser's question again."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self.name = generator.name
        self.known: dict[str, list[float]] = {}

    def generate(self, conversations, params, progress=None) -> list[str]:
        return self.generator.generate(conversations, params, progress)

    def choice_logprobs(self, conversations, choices, progress=None) -> list[list[float]]:
        keys = [json.dumps([c, list(choices)], sort_keys=True) for c in conversations]
        new = {k: c for k, c in zip(keys, conversations, strict=True) if k not in self.known}
        self.known.update(zip(new, self.generator.choice_logprobs(list(new.values()), choices, progress)
                              if new else [], strict=True))
        return [self.known[k] for k in keys]


def _shown_once(response: Response) -> str:
    return show(response, "A", 0)


@dataclass(frozen=True)
class ConsistencyChecked:
    """`method`, with each verdict's winner judged again without each of its first `units` parts."""

    method: JudgeMethod
    units: int = 4
    margin: float = 0.0
    """A verdict leaning less than this far from 1/2 has no winner to check (the pairs stage drops it anyway)."""

    @property
    def name(self) -> MethodName:
        return self.method.name

    def judge(self, generator: Generator, matchups: Sequence[Matchup],
              progress: Progress | None = None) -> list[Verdict]:
        generator = _Remembered(generator)
        verdicts = self.method.judge(generator, matchups, progress)
        checks: list[tuple[int, bool]] = []  # (verdict index, winner is B)
        ablated: list[Matchup] = []
        for i, (matchup, verdict) in enumerate(zip(matchups, verdicts, strict=True)):
            if verdict.abstained or abs(verdict.p_b - 0.5) <= self.margin:
                continue
            b_wins = verdict.p_b > 0.5
            winner = matchup.b if b_wins else matchup.a
            for index in ablation_order(len(parts(_shown_once(winner))[0]), self.units):
                shown = _ablated(winner, index)
                ablated.append(replace(matchup, b=shown) if b_wins else replace(matchup, a=shown))
                checks.append((i, b_wins))
        if not ablated:
            return verdicts
        rejudged = self.method.judge(generator, ablated)
        suspect = {i for (i, b_wins), again in zip(checks, rejudged, strict=True)
                   if not again.abstained and (again.p_b <= 0.5 if b_wins else again.p_b >= 0.5)}
        return [replace(v, suspect=True) if i in suspect else v for i, v in enumerate(verdicts)]


def checked(method: JudgeMethod, units: int, margin: float = 0.0) -> JudgeMethod:
    """`method` under the consistency check, or as it is with `units` = 0."""
    return ConsistencyChecked(method, units, margin) if units > 0 else method
