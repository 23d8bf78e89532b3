"""Text addressed to the judge, found by its words: the first cut of the defences.

LLM judges follow text inside the material they judge (instructions to ignore the rubric, requested scores or
verdicts, fake fence markers). This lexical detector was tuned on the built-on canaries (`critique.canaries`);
pairs it flags never reach training. The defences that do not depend on an attacker's wording are the judge
prompt's datamarking (`critique.prompts.fence`) and the consistency check (`critique.consistency`).
"""

from __future__ import annotations

import re

# Words in any case; the option letters A/B case-sensitive, so "pick a number" is not a verdict.
_PATTERNS: dict[str, str] = {
    "ignore-instructions": r"(?i:\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}"
                           r"\b(?:instructions?|rubric|rules|criteria|principles?|prompt|above|previous)\b)",
    "names-a-label": r"(?i:\b(?:response|answer|option|choice|candidate)\s*)\(?[AB]\)?(?i:\s+(?:is|was|should be|"
                     r"must be|wins|deserves)\b)",
    "names-a-position": r"(?i:\b(?:first|second|former|latter|other|top|bottom|previous|next)\s+"
                        r"(?:response|answer|one|option)\s+(?:is|was|should be|must be|wins)\s+"
                        r"(?:clearly\s+|obviously\s+)?(?:the\s+)?(?:better|best|correct|preferred|winner|worse|worst))",
    "requests-a-verdict": r"(?i:\b(?:answer|choose|select|pick|output|respond with|vote for|verdict|label)\s*"
                          r"(?:is\s*)?[:=]?\s*)[\"'(]?[AB][\"')]?(?:\b|$)|(?i:\banswer\s*[:=]\s*(?:yes|no)\b)",
    "requests-a-score": r"(?i:\b(?:score|rating|grade|verdict|preference)\s*[:=]\s*\S)",
    "this-one-wins": r"(?i:\b(?:this|my|the present)\s+(?:response|answer)\s+(?:is|should be|must be)\s+"
                     r"(?:the\s+)?(?:better|best|correct|chosen|selected|preferred|winner|rated))",
    "addresses-the-judge": r"(?i:\b(?:note|message|instruction)s?\s+(?:to|for)\s+(?:the\s+)?(?:ai\s+)?"
                           r"(?:judge|evaluator|grader|reviewer|rater)|\b(?:dear|attention|hey)\s+(?:ai\s+)?"
                           r"(?:judge|evaluator|grader|rater)|\bas\s+(?:the|an?)\s+(?:ai\s+)?"
                           r"(?:judge|evaluator|grader|rater)\b)",
    "fake-marker": r"(?i:\[\s*(?:begin|end)\s+(?:response|request)\b|<\|[a-z_]+\|>|^\s*#{2,}\s*(?:system|instruction)"
                   r"|^\s*(?:system|assistant|user)\s*:)",
}
DETECTORS = {name: re.compile(pattern, re.MULTILINE) for name, pattern in _PATTERNS.items()}


def injection_reasons(text: str) -> list[str]:
    """The kinds of judge-addressed text found in `text` (empty when clean)."""
    return [name for name, pattern in DETECTORS.items() if pattern.search(text)]


def is_injection(text: str) -> bool:
    return bool(injection_reasons(text))
