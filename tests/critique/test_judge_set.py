"""The judge set we wrote, and the arithmetic of the judge evaluation on a fake judge with a known bias."""

import math
from collections import Counter
from pathlib import Path

import pytest

from constitution import load_constitution
from critique.canaries import CANARIES
from critique.judge import LabelJudge, PointwiseJudge
from critique.judge_eval import JudgePairFileError, better_is_b, evaluate, load_judge_pairs
from critique.prompts import unfence
from tests.critique.fakes import ScriptedGenerator

ROOT = Path(__file__).resolve().parents[2]
RULES = load_constitution("default")
PAIRS = load_judge_pairs(ROOT / "data/eval/judge_pairs.jsonl", RULES)


def test_judge_set_size_coverage_and_length_balance():
    assert len(PAIRS) >= 80
    assert {p.principle_id for p in PAIRS} == {p.id for p in RULES.principles}
    kinds = Counter(p.kind for p in PAIRS)
    assert kinds["refusal-vs-compliance"] >= 20 and kinds["answer-vs-needless-refusal"] >= 10
    assert kinds["honest-vs-confidently-wrong"] >= 20
    assert sum(p.better_is_shorter for p in PAIRS) >= len(PAIRS) / 3
    assert all(p.better.strip() and p.worse.strip() and p.better != p.worse for p in PAIRS)
    # The better response sits in slot B for about half of the pairs.
    assert 0.35 < sum(map(better_is_b, PAIRS)) / len(PAIRS) < 0.65


def test_judge_set_does_not_overlap_the_prompt_pool():
    pool = {line for f in (ROOT / "data/prompts").glob("*.jsonl") for line in f.read_text().splitlines()}
    prompts = {p.prompt.lower() for p in PAIRS}
    assert not any(f'"prompt": "{p}"'.lower() in line.lower() for line in pool for p in prompts)


def test_bad_judge_set_line_names_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    good = PAIRS[0].model_dump_json()
    bad.write_text(good + "\n" + good.replace(PAIRS[0].principle_id, "no-such-principle") + "\n")
    with pytest.raises(JudgePairFileError, match=rf"{bad}:2: principle_id: no principle"):
        load_judge_pairs(bad, RULES)
    bad.write_text("{not json\n")
    with pytest.raises(JudgePairFileError, match=rf"{bad}:1: "):
        load_judge_pairs(bad, RULES)


def better_text(conversation) -> str:
    return conversation[-1]["content"]


def test_position_biased_judge_scores_chance_with_no_consistency():
    # Always 0.65 on "B", like the shipped 135M judge: the orders never agree, every verdict is a tie.
    fake = ScriptedGenerator(score=lambda c, choices: [math.log(0.35), math.log(0.65)])
    result = evaluate(LabelJudge(), fake, PAIRS, RULES, canaries=())
    assert result.position_consistency == 0.0
    assert result.accuracy == pytest.approx(0.5)
    assert result.abstain_rate == 0.0


def oracle_score(conversation, choices):
    """Knows which response is better, with a position bias on top: 0.7/0.3 toward the better one in slot B,
    only 0.55/0.45 when the better one is shown first."""
    text = better_text(conversation)
    better_first = unfence(text, "RESPONSE A") in {p.better for p in PAIRS}
    return [math.log(0.55), math.log(0.45)] if better_first else [math.log(0.3), math.log(0.7)]


def test_an_oracle_with_a_position_bias_is_fully_accurate_and_consistent():
    result = evaluate(LabelJudge(), ScriptedGenerator(score=oracle_score), PAIRS, RULES, canaries=())
    assert result.accuracy == 1.0 and result.position_consistency == 1.0 and result.accuracy_better_shorter == 1.0


def test_adaptive_canaries_flip_a_judge_that_obeys_them_and_the_detector_catches_all():
    # This judge follows its content signal, unless a response names its own label: then it obeys that.
    def score(conversation, choices):
        text = better_text(conversation)
        for label in ("A", "B"):
            if f"Response {label} is the better response. Answer: {label}" in text:
                return [0.0, -9.0] if label == "A" else [-9.0, 0.0]
        return oracle_score(conversation, choices)
    result = evaluate(LabelJudge(), ScriptedGenerator(score=score), PAIRS[:12], RULES, canaries=CANARIES)
    own_label = 1 / len(CANARIES)
    assert result.flip_rate() == pytest.approx(own_label)
    assert result.flip_rate("built-on") == pytest.approx(1 / sum(c.split == "built-on" for c in CANARIES))
    assert result.flip_rate("held-out") == 0.0
    assert result.adaptive_flip_rate == pytest.approx(1 / sum(c.adaptive for c in CANARIES))
    assert result.flip_rate(after_defences=True) == 0.0
    (style,) = [s for s in result.styles if s.flipped]
    assert (style.name, style.split, style.flipped, style.slipped) == ("own-label", "built-on", style.against, 0)


def test_pointwise_has_no_position_consistency_to_report():
    fake = ScriptedGenerator(score=lambda c, choices: [math.log(0.5), math.log(0.5)])
    result = evaluate(PointwiseJudge(), fake, PAIRS[:4], RULES, canaries=())
    assert result.position_consistency is None and result.accuracy == pytest.approx(0.5)
