"""The phrase refusal detectors (`rewards.refusal`) on the labelled answers of data/eval/refusal_labels.jsonl.

Prints precision, recall and n of `lexical` and `outcome` on all labels, then on the refuse-then-comply subset
(records whose note says "then complies": answers that open by declining and go on to comply, all labelled not a
refusal) how many each detector still calls a refusal. Torch-free; runs in well under a second. The detectors'
patterns were written while reading these labels, so the figures are in-sample.

Usage: python benchmarks/refusal_classifiers.py [--labels data/eval/refusal_labels.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards.refusal import REFUSAL_DETECTORS  # noqa: E402

SUBSET_NOTE = "then complies"


def precision_recall(predicted: list[bool], actual: list[bool]) -> tuple[float, float]:
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    return (tp / sum(predicted) if any(predicted) else math.nan), (tp / sum(actual) if any(actual) else math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=ROOT / "data/eval/refusal_labels.jsonl")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    actual = [row["refusal"] for row in rows]
    subset = [row for row in rows if SUBSET_NOTE in row.get("note", "")]
    print(f"{len(rows)} labelled answers, {sum(actual)} refusals; {len(subset)} refuse-then-comply")
    print(f"{'detector':<10}{'precision':>10}{'recall':>8}{'n':>5}  refuse-then-comply called refusal")
    for name, detector in REFUSAL_DETECTORS.items():
        predicted = [detector(row["response"]) for row in rows]
        precision, recall = precision_recall(predicted, actual)
        wrong = sum(detector(row["response"]) != row["refusal"] for row in subset)
        print(f"{name:<10}{precision:>10.3f}{recall:>8.3f}{len(rows):>5}  {wrong} of {len(subset)}")
        for row, p in zip(rows, predicted, strict=True):
            if p != row["refusal"]:
                print(f"    missed {row['id']} (labelled {row['refusal']}): {row['note']}")


if __name__ == "__main__":
    main()
