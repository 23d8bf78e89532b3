"""Our DPO trainer against TRL's DPOTrainer on the same work: SmolLM2-135M-Instruct, LoRA r=16 on all linear
layers, per-device batch 4, max length 256, fp32, 2 threads, the same synthetic pairs.

Each run is its own subprocess (peak RSS is per process), alternating ours and TRL's. Prints the median
step-time ratio and the peak-RSS ratio; the last line is machine-readable:

    speedup=<TRL step time / ours> rss_ratio=<our peak RSS / TRL's> loss0_diff=<|our step-0 loss - TRL's|>

Usage: python benchmarks/dpo_vs_trl.py [--steps 6] [--repeats 2] [--gradient-checkpointing on|off]
Needs the test extras (TRL) and the SmolLM2 package (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH, MAX_LENGTH, THREADS, LORA_R, BETA, LR = 4, 256, 2, 16, 0.1, 5e-5


def synthetic_pairs(n: int) -> list[dict]:
    """Deterministic pairs long enough that every sequence fills the 256-token budget."""
    topics = ["tides", "compilers", "bread", "volcanoes", "jazz", "orbits", "glaciers", "databases"]
    pairs = []
    for i in range(n):
        topic = topics[i % len(topics)]
        prompt = f"Please explain {topic} to a curious student, with one concrete example (case {i})."
        chosen = " ".join(f"Point {k}: {topic} can be understood step by step, and here is why it matters."
                          for k in range(12))
        rejected = " ".join(f"Well, {topic} is a thing. I am not sure about detail {k}, maybe look it up."
                            for k in range(12))
        pairs.append({"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected})
    return pairs


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_dir() -> Path:
    from policies.models import DEFAULT_MODEL, resolve_model_dir

    return resolve_model_dir(DEFAULT_MODEL, Path(os.environ.get("CAI_HOME", "~/.cache/cai")).expanduser())


def run_ours(steps: int, checkpointing: bool) -> dict:
    from policies.adapters import LoraSettings, attach_trainable_adapter
    from policies.models import load_model
    from policies.training.data import PreferenceExample
    from policies.training.preference import PreferenceSettings, PreferenceTrainer

    model, tokenizer = load_model(model_dir(), device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=LORA_R, alpha=2 * LORA_R))
    settings = PreferenceSettings(beta=BETA, learning_rate=LR, batch_size=BATCH, max_length=MAX_LENGTH,
                                  max_steps=steps, gradient_checkpointing=checkpointing, length_bucketing=False)
    examples = [PreferenceExample(p["prompt"], p["chosen"], p["rejected"]) for p in synthetic_pairs(steps * BATCH)]
    stamps, losses = [], []

    def on_step(step):
        stamps.append(time.perf_counter())
        losses.append(step.metrics["loss"])

    started = time.perf_counter()
    PreferenceTrainer(model, tokenizer, settings).train(examples, on_step)
    return {"step_times": [b - a for a, b in zip([started, *stamps], stamps, strict=False)][1:],
            "loss0": losses[0], "wall": time.perf_counter() - started}


def run_trl(steps: int, checkpointing: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    stamps, losses = [], []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    config = DPOConfig(output_dir="/tmp/cai-bench-trl", per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                       max_steps=steps, learning_rate=LR, beta=BETA, logging_steps=1, report_to="none",
                       save_strategy="no", use_cpu=True, bf16=False, fp16=False, disable_tqdm=True,
                       gradient_checkpointing=checkpointing, dataloader_num_workers=0, seed=0)
    peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", task_type="CAUSAL_LM")
    # TRL's conversational format: completions are assistant messages.
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in synthetic_pairs(steps * BATCH)]
    trainer = DPOTrainer(model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft, callbacks=[Timer()])
    started = time.perf_counter()
    trainer.train()
    return {"step_times": [b - a for a, b in zip([started, *stamps], stamps, strict=False)][1:],
            "loss0": losses[0], "wall": time.perf_counter() - started}


def worker(which: str, steps: int, checkpointing: bool) -> None:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    result = (run_ours if which == "ours" else run_trl)(steps, checkpointing)
    print("RESULT " + json.dumps({**result, "peak_rss_mib": peak_rss_mib()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                        help="the same setting for both (TRL's DPOConfig turns it on by default)")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpointing = args.gradient_checkpointing == "on"
    if args.worker:
        worker(args.worker, args.steps, checkpointing)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for repeat in range(args.repeats):
        for which in ("ours", "trl"):
            out = subprocess.run([sys.executable, __file__, "--worker", which, "--steps", str(args.steps),
                                  "--gradient-checkpointing", args.gradient_checkpointing],
                                 capture_output=True, text=True, env=env, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                sys.exit(f"{which} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            result = json.loads(line.removeprefix("RESULT "))
            runs[which].append(result)
            print(f"run {repeat + 1} {which:>4}: median step {statistics.median(result['step_times']):6.2f} s, "
                  f"peak RSS {result['peak_rss_mib']:7.0f} MiB, step-0 loss {result['loss0']:.4f}, "
                  f"wall {result['wall']:6.1f} s", flush=True)

    def median_step(which: str) -> float:
        return statistics.median(t for r in runs[which] for t in r["step_times"])

    def peak(which: str) -> float:
        return max(r["peak_rss_mib"] for r in runs[which])

    speedup = median_step("trl") / median_step("ours")
    rss_ratio = peak("ours") / peak("trl")
    loss0_diff = abs(runs["ours"][0]["loss0"] - runs["trl"][0]["loss0"])
    print(f"median step: ours {median_step('ours'):.2f} s, TRL {median_step('trl'):.2f} s; "
          f"peak RSS: ours {peak('ours'):.0f} MiB, TRL {peak('trl'):.0f} MiB; "
          f"gradient checkpointing {args.gradient_checkpointing} for both")
    print(f"speedup={speedup:.3f} rss_ratio={rss_ratio:.3f} loss0_diff={loss0_diff:.6f}")


if __name__ == "__main__":
    main()
