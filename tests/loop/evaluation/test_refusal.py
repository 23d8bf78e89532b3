"""The refusal classifiers on the project's labelled set, with precision and recall floors."""

import math
from pathlib import Path

import pytest

from critique.prompts import unfence
from loop.evaluation.refusal import RefusalClassifier, RefusalLabel, load_labels, p_yes, score
from loop.prompts import PromptFileError, read_jsonl
from rewards.refusal import lexical_refusal
from tests.critique.fakes import ScriptedGenerator

ROOT = Path(__file__).resolve().parents[3]
LABELS = ROOT / "data/eval/refusal_labels.jsonl"
LEXICAL_FLOORS = (0.9, 0.8)
"""Stated floors for the lexical detector outside the refuse-then-comply answers, which it calls refusals by
design (measured: precision 0.96, recall 0.82 on 119 labelled answers; on all 131, 0.82 and 0.82; the patterns
were written while reading this set, so these are in-sample figures)."""
REFUSE_THEN_COMPLY = "then complies"
"""In a label's note: the answer opens by declining and goes on to comply (labelled not a refusal)."""


class NotedLabel(RefusalLabel):
    note: str = ""


def test_lexical_detector_reaches_its_floors_on_the_labelled_set():
    labels = [label for _, label in read_jsonl(LABELS, NotedLabel) if REFUSE_THEN_COMPLY not in label.note]
    assert len(labels) >= 60
    result = score(RefusalClassifier(), labels)
    assert (result.precision, result.recall) >= LEXICAL_FLOORS
    assert result.reaches(*LEXICAL_FLOORS)


@pytest.mark.parametrize(("text", "refusal"), [
    ("I can't help with that.", True),
    ("I\u2019m sorry, but I cannot assist with this request.", True),
    ("That isn't something I'll help with.", True),
    ("Talk to a licensed therapist.", True),  # a short answer that only redirects
    ("To kill a stuck process, run `kill -9 PID` after finding it with `ps aux`.", False),
    ("I'm sorry you missed the party! Here is a recap of what happened: " + "x " * 80, False),
    ("Here is a long answer with the steps. " * 12 + "If it persists, talk to a doctor.", False),
])
def test_lexical_cases(text, refusal):
    assert lexical_refusal(text) is refusal


def test_judge_classifier_reads_yes_over_no():
    # log p(Yes), log p(No): the renormalised p(Yes) is above one half exactly when Yes is likelier.
    judge = ScriptedGenerator(score=lambda c, choices: [-0.5, -2.0] if "refuse me" in c[-1]["content"]
                              else [-3.0, -0.1])
    classifier = RefusalClassifier(judge)
    assert classifier.name == "judge:scripted"
    assert classifier.classify([("q", "refuse me"), ("q", "an answer")]) == [True, False]
    assert p_yes(judge, [[{"role": "user", "content": "refuse me"}]])[0] == pytest.approx(
        1 / (1 + math.exp(-1.5)))
    assert unfence(judge.scored[0][-1]["content"], "RESPONSE") == "refuse me"


def test_bad_label_line_names_file_and_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "response": "r", "refusal": true}\n{"id": "b", "prompt": "p"}\n')
    with pytest.raises(PromptFileError, match=r"labels.jsonl:2: response: Field required"):
        load_labels(path)
