"""Best-of-n reranking by the constitution's checks, measured on the held-out sets with the evaluation's refusal
classifier: does picking the best of n samples of the base policy answer harmful requests more safely without
refusing more benign-but-risky ones?

For each n, `cai generate`'s own code (`loop.pipeline.generate_file`) answers the first `--per-set` prompts of
data/eval/harmful.jsonl and data/eval/benign_risky.jsonl with the base model, n samples per prompt at the given
temperature, keeps the sample the `checks` reward scores highest, and the chosen answers are classified by the
refusal classifier the evaluation uses by default (`evaluation.refusal.classifier: auto`: the judge when it
reaches the precision and recall floors on data/eval/refusal_labels.jsonl, else the lexical detector). For n > 1
the rates of the first sample alone are shown too: a best-of-1 drawn in the same run.

With --greedy, a first row of greedy answers (temperature 0, as the evaluation answers) for reference.

Prints a table, then a last line `best_of_N: harmful_safe=... benign_refusal=... ...` for each row.

Usage: python benchmarks/best_of_n.py [--best-of 1 4] [--per-set 40] [--temperature 1.0] [--top-p 1.0] [--greedy]
       [--out runs/best-of-n]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from loop.evaluation.refusal import choose_classifier  # noqa: E402
from loop.evaluation.settings import RefusalSettings  # noqa: E402
from loop.pipeline.generate_file import Options, generate_file, resolve_source  # noqa: E402
from loop.progress import RichReporter  # noqa: E402

SETS = {"harmful": ROOT / "data/eval/harmful.jsonl", "benign_risky": ROOT / "data/eval/benign_risky.jsonl"}


def prompt_file(per_set: int, out: Path) -> dict[str, str]:
    """The first `per_set` prompts of each set in one JSONL under `out`; the set of each prompt id."""
    lines, set_of = [], {}
    for name, path in SETS.items():
        for line in [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()][:per_set]:
            set_of[json.loads(line)["id"]] = name
            lines.append(line)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return set_of


def rates(records: list[dict], set_of: dict[str, str], refused: dict[str, bool]) -> dict[str, float]:
    """harmful_safe (share of harmful prompts refused) and benign_refusal (share of benign-but-risky refused)."""
    def share(name: str) -> float:
        return statistics.fmean(refused[r["id"]] for r in records if set_of[r["id"]] == name)

    return {"harmful_safe": share("harmful"), "benign_refusal": share("benign_risky")}


def first_sample(record: dict) -> str:
    """The text of a record's first sample, chosen or beaten: an answer drawn as best-of-1 would draw it."""
    if record["sample"] == 0:
        return record["answer"]
    return next(b["text"] for b in record["beaten"] if b["sample"] == 0)


def refused(classifier, records: list[dict], text) -> dict[str, bool]:
    """Each record's id -> whether the classifier calls `text(record)` a refusal of its prompt."""
    labels = classifier.classify([(r["prompt"], text(r)) for r in records])
    return dict(zip((r["id"] for r in records), labels, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--best-of", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--per-set", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="Also a row of greedy answers (as the evaluation's).")
    parser.add_argument("--model", default=None, help="The base model (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/best-of-n",
                        help="Where the prompts and each n's answers (best-of-N.jsonl) are written.")
    args = parser.parse_args()
    console = Console(stderr=True)
    set_of = prompt_file(args.per_set, args.out)
    source = resolve_source(None, "base", model=args.model)
    runs = {}
    for label, n, temperature in [*([("greedy", 1, 0.0)] if args.greedy else []),
                                  *((str(n), n, args.temperature) for n in args.best_of)]:
        options = Options(n, "checks", args.max_new_tokens, temperature, args.top_p, args.seed)
        path = args.out / f"best-of-{label}.jsonl"
        summary = generate_file(source, args.out / "prompts.jsonl", path, options, RichReporter(console))
        runs[label] = (summary, [json.loads(line) for line in path.read_text().splitlines()])

    from loop.pipeline.context import Engines

    judge = Engines(source.config, policy_version=0, adapter=None).judge
    classifier, _ = choose_classifier(RefusalSettings(), judge, RichReporter(console))
    print(f"base model {source.config.model.name}, {args.per_set} prompts per set, temperature {args.temperature}, "
          f"top-p {args.top_p}, {args.max_new_tokens} tokens, reranked by the checks reward; refusals by the "
          f"{classifier.name} classifier (the evaluation's default choice)")
    print(f"{'best of':>8}{'harmful_safe':>14}{'benign_refusal':>16}{'first sample h/b':>18}"
          f"{'chosen score':>14}{'first score':>13}{'minutes':>9}{'samples/s':>11}")
    last = []
    for label, (summary, records) in runs.items():
        chosen = rates(records, set_of, refused(classifier, records, lambda r: r["answer"]))
        first = rates(records, set_of, refused(classifier, records, first_sample))
        print(f"{label:>8}{chosen['harmful_safe']:>14.3f}{chosen['benign_refusal']:>16.3f}"
              f"{first['harmful_safe']:>10.3f}/{first['benign_refusal']:.3f}"
              f"{summary['mean_chosen_score']:>14.3f}{summary['mean_first_score']:>13.3f}"
              f"{summary['wall_s'] / 60:>9.1f}{summary['samples_per_s']:>11.2f}")
        last.append(f"best_of_{label}: harmful_safe={chosen['harmful_safe']:.3f} "
                    f"benign_refusal={chosen['benign_refusal']:.3f} first_harmful_safe={first['harmful_safe']:.3f} "
                    f"first_benign_refusal={first['benign_refusal']:.3f} score={summary['mean_chosen_score']:.3f}")
    print(" ".join(last) + f" classifier={classifier.name}")


if __name__ == "__main__":
    main()
