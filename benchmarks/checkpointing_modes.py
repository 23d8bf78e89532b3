"""Our DPO trainer under each `gradient_checkpointing` mode, on the work of `dpo_vs_trl.py` (SmolLM2, LoRA r=16,
batch 4, length 256, fp32, 2 threads, the same pairs and steps): what `selective` buys against `full` and costs
against `off`. Each run is a fresh `python -m policies.training SPEC.json`, timed like the DPO benchmark: median
step, whole job from start to the adapter on disk, peak RSS, last loss (the same in every mode: the modes only
change what the backward pass recomputes).

The last line is machine-readable, ratios of `selective` against the other two:

    step_speedup_vs_full=<full / selective step> step_ratio_vs_off=<selective / off step>
    rss_ratio_vs_full=<selective / full peak RSS> rss_ratio_vs_off=<selective / off peak RSS>

Usage: python benchmarks/checkpointing_modes.py [--steps 6] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_vs_trl import alternate, bench_env, combine, describe, our_spec, timed_run

MODES = ["off", "full", "selective"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternating")
    args = parser.parse_args()

    def run(mode: str, output: Path) -> dict:
        spec = our_spec(args.steps, output, checkpointing=mode)
        return timed_run([sys.executable, "-m", "policies.training", str(spec)], "CAI_PROGRESS ", bench_env())

    totals = {mode: combine(runs) for mode, runs in alternate(MODES, args.repeats, run).items()}
    for mode in MODES:
        print(f"{mode:>12}: {describe(totals[mode])}")
    off, full, selective = (totals[mode] for mode in MODES)
    print(f"step_speedup_vs_full={full['median_step'] / selective['median_step']:.3f} "
          f"step_ratio_vs_off={selective['median_step'] / off['median_step']:.3f} "
          f"rss_ratio_vs_full={selective['peak_rss_mib'] / full['peak_rss_mib']:.3f} "
          f"rss_ratio_vs_off={selective['peak_rss_mib'] / off['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
