"""Our DPO trainer against TRL's DPOTrainer on the same work, like for like: SmolLM2-135M-Instruct, LoRA r=16 on
all linear layers, batch 4, max length 256 (the prompt loses its oldest tokens, completions are cut at the end),
fp32, 2 threads, gradient checkpointing on both sides, AdamW with a linear decay (TRL's default), the same synthetic
pairs, one epoch of `--steps` steps. Checkpointing differs in what it keeps: TRL's recomputes each layer whole, ours
is `selective` (it keeps the projections' and attention's outputs and recomputes norms and activations), which
spends part of the memory the rest of our trainer saves; the RSS ratio shows what is left.

Both sides compute the reference log-probs once before training (TRL: `precompute_ref_log_probs=True`); TRL at
its defaults (the reference recomputed inside every step) is a second row for information. Each run is a fresh
process, started the way a user starts it: ours is `python -m policies.training SPEC.json`, TRL's is a script
that builds a DPOTrainer, trains and saves the adapter. For every run the parent records:

* the median step time (steps after the first), from the moments each step is reported;
* the whole-job wall time, from starting the process to the adapter on disk;
* the peak RSS of that process;
* the tokens trained on (prompt + completion of chosen and rejected, after truncation; TRL: the non-padding
  tokens of the batches it trained on), which must agree within 2 %;
* the loss after the last step.

The last line is machine-readable (ratios of ours against TRL with the reference precomputed):

    step_speedup=<TRL step / ours> wall_speedup=<TRL wall / ours> rss_ratio=<ours / TRL> tokens_ratio=<ours / TRL>

Usage: python benchmarks/dpo_vs_trl.py [--steps 6] [--repeats 2] [--no-trl-defaults]
Needs the test extras (TRL) and the SmolLM2 package (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, MAX_LENGTH, THREADS, LORA_R, BETA, LR = 4, 256, 2, 16, 0.1, 5e-5
TOKENS_TOLERANCE = 0.02


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


def model_dir() -> Path:
    from policies.models import DEFAULT_MODEL, resolve_model_dir

    return resolve_model_dir(DEFAULT_MODEL, Path(os.environ.get("CAI_HOME", "~/.cache/cai")).expanduser())


def say(kind: str, **payload) -> None:
    print(f"BENCH {json.dumps({'kind': kind, **payload})}", flush=True)


def trl_worker(steps: int, precompute: bool, output: Path) -> None:
    """TRL's DPOTrainer on the same pairs; reports each step, the tokens it trained on and the saved adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(THREADS)
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    counted = {"tokens": 0}

    class Reporter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            say("step", step=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                say("loss", step=state.global_step, loss=logs["loss"])

    class CountingDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:  # the batches trained on, not the reference precomputation
                counted["tokens"] += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    config = DPOConfig(output_dir=str(output / "trl"), per_device_train_batch_size=BATCH, max_length=MAX_LENGTH,
                       max_steps=steps, learning_rate=LR, beta=BETA, logging_steps=1,
                       report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
                       disable_tqdm=True, gradient_checkpointing=True, dataloader_num_workers=0, seed=0,
                       precompute_ref_log_probs=precompute)
    peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", task_type="CAUSAL_LM")
    # TRL's conversational format: completions are assistant messages.
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in synthetic_pairs(steps * BATCH)]
    trainer = CountingDPOTrainer(model, args=config, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=peft, callbacks=[Reporter()])
    trainer.train()
    trainer.model.save_pretrained(output / "adapter")
    say("done", tokens=counted["tokens"])


def our_spec(steps: int, output: Path, checkpointing: str = "selective") -> Path:
    from policies.training.preference import PreferenceSettings
    from policies.training.spec import TrainSpec

    data = output / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pairs(steps * BATCH)))
    settings = PreferenceSettings(beta=BETA, learning_rate=LR, batch_size=BATCH, max_length=MAX_LENGTH,
                                  max_steps=steps, gradient_checkpointing=checkpointing,
                                  scheduler="linear")  # TRL's (transformers') default: linear decay, no warmup
    spec = TrainSpec(kind="preference", model_dir=model_dir(), data=data, output_dir=output / "ours", device="cpu",
                     threads=THREADS, lora={"r": LORA_R, "alpha": 2 * LORA_R}, preference=settings)
    path = output / "spec.json"
    path.write_text(spec.model_dump_json())
    return path


def our_tokens(steps: int) -> tuple[int, int]:
    """(tokens trained on as sequences, tokens our forward passes compute with each prompt shared)."""
    from transformers import AutoTokenizer

    from policies.training.data import PreferenceExample, encode_pair

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    pairs = [encode_pair(tokenizer, PreferenceExample(p["prompt"], p["chosen"], p["rejected"]), MAX_LENGTH)
             for p in synthetic_pairs(steps * BATCH)]
    return sum(p.tokens for p in pairs), sum(p.tokens - len(p.prompt) for p in pairs)


def timed_run(command: list[str], prefix: str, env: dict[str, str]) -> dict:
    """Run one job; timestamps of its progress lines (relative to the start), its peak RSS and its events."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    events, tail = [], []
    for line in process.stdout:
        if line.startswith(prefix):
            events.append({"at": time.perf_counter() - started, **json.loads(line[len(prefix):])})
        tail = (tail + [line])[-40:]
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{''.join(tail)}")
    return {"events": events, "peak_rss_mib": usage.ru_maxrss / 1024}


def summarise(run: dict) -> dict:
    events = run["events"]
    stamps = [e["at"] for e in events if e["kind"] == "step"]
    losses = [e["loss"] for e in events if e["kind"] in ("loss", "step") and "loss" in e]
    done = next(e for e in events if e["kind"] == "done")
    return {"median_step": statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)),
            "wall": done["at"], "peak_rss_mib": run["peak_rss_mib"], "last_loss": losses[-1],
            "tokens": done.get("tokens")}


def describe(result: dict) -> str:
    return (f"median step {result['median_step']:6.2f} s, wall {result['wall']:6.1f} s, "
            f"peak RSS {result['peak_rss_mib']:6.0f} MiB, last loss {result['last_loss']:.4f}")


def bench_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def alternate(labels: list[str], repeats: int, run, summary=summarise, show=describe) -> dict[str, list[dict]]:
    """`repeats` runs of each label, alternating so that a drift of the machine's speed reaches all of them;
    `run(label, output_dir)` is one `timed_run`, `summary` turns it into a result and `show` into a line."""
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for repeat in range(repeats):
        for label in labels:
            with tempfile.TemporaryDirectory(prefix="cai-bench-") as tmp:
                result = summary(run(label, Path(tmp)))
            runs[label].append(result)
            print(f"run {repeat + 1} {label:>12}: {show(result)}", flush=True)
    return runs


def combine(runs: list[dict]) -> dict:
    """Medians of the step and wall times over the runs, the highest peak RSS, the last run's loss."""
    return {"median_step": statistics.median(r["median_step"] for r in runs),
            "wall": statistics.median(r["wall"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "last_loss": runs[-1]["last_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (one epoch of steps x 4 pairs)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating")
    parser.add_argument("--no-trl-defaults", action="store_true", help="skip the row of TRL at its defaults")
    parser.add_argument("--worker", choices=("trl", "trl-defaults"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trl_worker(args.steps, args.worker == "trl", args.output)
        return

    sides = ["ours", "trl"] + ([] if args.no_trl_defaults else ["trl-defaults"])

    def run(side: str, output: Path) -> dict:
        if side == "ours":
            return timed_run([sys.executable, "-m", "policies.training", str(our_spec(args.steps, output))],
                             "CAI_PROGRESS ", bench_env())
        return timed_run([sys.executable, __file__, "--worker", side, "--steps", str(args.steps),
                          "--output", str(output)], "BENCH ", bench_env())

    runs = alternate(sides, args.repeats, run)
    totals = {side: combine(runs[side]) for side in sides}

    tokens, computed = our_tokens(args.steps)
    trl_tokens = runs["trl"][0]["tokens"]
    print(f"tokens trained on: ours {tokens}, TRL {trl_tokens} (ours computes {computed}: each prompt once)")
    for side in sides:
        print(f"{side:>12}: {describe(totals[side])}")
    tokens_ratio = tokens / trl_tokens
    if abs(tokens_ratio - 1) > TOKENS_TOLERANCE:
        print(f"WARNING: the two sides trained on different tokens ({tokens_ratio:.3f}x): not like for like")
    ours, trl = totals["ours"], totals["trl"]
    print(f"step_speedup={trl['median_step'] / ours['median_step']:.3f} wall_speedup={trl['wall'] / ours['wall']:.3f} "
          f"rss_ratio={ours['peak_rss_mib'] / trl['peak_rss_mib']:.3f} tokens_ratio={tokens_ratio:.3f}")


if __name__ == "__main__":
    main()
