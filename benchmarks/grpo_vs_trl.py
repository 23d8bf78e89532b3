"""Our GRPO trainer against TRL's GRPOTrainer on the same work, like for like: SmolLM2-135M-Instruct, LoRA r=16 on
all linear layers, fp32, 2 threads, in-process generation with the transformers `generate` on both sides. Each
optimizer step samples G=4 completions of 4 prompts (16 completions, temperature 1, top-p 1, up to 64 new tokens),
scores them with the same reward function (cai's `task` reward kind: the prompt's format constraints, all
lowercase and no commas, each 1 met or 0 not, averaged), normalises the advantages per group by the group's std,
and takes one optimizer step over two micro-batches of 8 with the DAPO loss (every token alike), clip 0.2 low and
0.28 high (DAPO's clip-higher), beta 0.04 (the k3 KL to the model with its adapter disabled), truncated
completions trained as they are (TRL's default), AdamW with a linear decay, gradient checkpointing on (TRL's
default; ours `selective`, TRL's recomputes each layer whole: the RSS ratio shows what that leaves).

The prompts ask for long stories, so nearly every completion runs to the 64-token limit on both sides and the two
generate (and train on) the same number of tokens, which the benchmark checks (within 2 %); the completions
themselves differ, since each side samples with its own random stream. Each run is a fresh process started the
way a user starts it: ours is `python -m policies.training SPEC.json`, TRL's a script that builds a GRPOTrainer,
trains and saves the adapter. For every run the parent records the median step time (steps after the first: a
step is generation, scoring and the update), the whole-job wall time (process start to the adapter on disk), the
peak RSS of the process, the completion tokens generated and the mean reward of the last step.

The last line is machine-readable (ratios of ours against TRL):

    step_speedup=<TRL step / ours> wall_speedup=<TRL wall / ours> rss_ratio=<ours / TRL> tokens_ratio=<ours / TRL>

Usage: python benchmarks/grpo_vs_trl.py [--steps 5] [--repeats 1]
Needs the test extras (TRL) and the SmolLM2 package (see the README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from dpo_vs_trl import alternate, bench_env, model_dir, say, timed_run

PROMPTS_PER_STEP, GROUP, MAX_NEW_TOKENS, MICRO_BATCH, GRAD_ACCUM = 4, 4, 64, 8, 2
THREADS, LORA_R, BETA, LR, CLIP_LOW, CLIP_HIGH = 2, 16, 0.04, 5e-5, 0.2, 0.28
TOKENS_TOLERANCE = 0.02
TASK = {"constraints": [{"kind": "lowercase"}, {"kind": "no_commas"}]}


def task_prompts(n: int) -> list[dict]:
    """Deterministic prompts whose answers run past 64 tokens, with two constraints the reward checks."""
    topics = ["a lighthouse keeper", "a lost robot", "two rival bakers", "a comet", "an old violin",
              "a river town", "a chess club", "a night train"]
    return [{"prompt": [{"role": "user", "content": f"Write a long story of at least 300 words about "
                                                    f"{topics[i % len(topics)]} (story {i}). Write it in all "
                                                    f"lowercase letters and do not use any commas."}],
             "category": "benign", "task": TASK, "principle": None} for i in range(n)]


def task_reward():
    """cai's `task` reward kind, the scorer both sides call: (prompt text, completion text) -> total."""
    from rewards import RewardComponentSettings, RewardContext, RewardSettings, Scored, TaskSpec, build_scorer

    scorer = build_scorer(RewardSettings(components=[RewardComponentSettings(kind="task")]),
                          RewardContext(constitution=None))  # type: ignore[arg-type]  (task reads no constitution)
    task = TaskSpec.model_validate(TASK)

    def score(prompts: list[str], texts: list[str]) -> list[float | None]:
        items = [Scored(prompt=p, response=t, category="benign", task=task)
                 for p, t in zip(prompts, texts, strict=True)]
        return [reward.total for reward in scorer.score(items)]

    return score


def trl_worker(steps: int, output: Path) -> None:
    """TRL's GRPOTrainer on the same prompts and reward; reports each step, the tokens generated and the adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(THREADS)
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    score, counted = task_reward(), {"tokens": 0, "rewards": []}

    def reward(prompts, completions, completion_ids, **_) -> list[float | None]:
        counted["tokens"] += sum(len(ids) for ids in completion_ids)
        rewards = score([p[-1]["content"] for p in prompts], [c[-1]["content"] for c in completions])
        counted["rewards"] = rewards
        return rewards

    class Reporter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            done = [r for r in counted["rewards"] if r is not None]
            say("step", step=state.global_step, reward_mean=statistics.fmean(done) if done else None)

    config = GRPOConfig(output_dir=str(output / "trl"), per_device_train_batch_size=MICRO_BATCH,
                        gradient_accumulation_steps=GRAD_ACCUM, num_generations=GROUP,
                        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, max_steps=steps,
                        learning_rate=LR, beta=BETA, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, loss_type="dapo",
                        scale_rewards="group", mask_truncated_completions=False, logging_steps=1,
                        report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
                        disable_tqdm=True, gradient_checkpointing=True, dataloader_num_workers=0, seed=0)
    peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules="all-linear", task_type="CAUSAL_LM")
    rows = [{"prompt": p["prompt"]} for p in task_prompts(steps * PROMPTS_PER_STEP)]
    trainer = GRPOTrainer(model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft, callbacks=[Reporter()])
    trainer.train()
    trainer.model.save_pretrained(output / "adapter")
    say("done", tokens=counted["tokens"])


def our_spec(steps: int, output: Path) -> Path:
    from policies.training.settings import GRPOSettings
    from policies.training.spec import TrainSpec

    data = output / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in task_prompts(steps * PROMPTS_PER_STEP)))
    settings = GRPOSettings(steps=steps, prompts_per_step=PROMPTS_PER_STEP, group_size=GROUP,
                            max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, max_length=384,
                            scale="group", loss_type="dapo", clip_low=CLIP_LOW, clip_high=CLIP_HIGH, beta=BETA,
                            overlong="none", learning_rate=LR, batch_size=MICRO_BATCH, grad_accum=GRAD_ACCUM,
                            scheduler="linear", gradient_checkpointing="selective")
    spec = TrainSpec(kind="grpo", model_dir=model_dir(), data=data, output_dir=output / "ours", device="cpu",
                     threads=THREADS, lora={"r": LORA_R, "alpha": 2 * LORA_R}, grpo=settings)
    path = output / "spec.json"
    path.write_text(spec.model_dump_json())
    return path


def summarise(run: dict) -> dict:
    """Median step time, wall time, peak RSS, completion tokens and the last step's mean reward of one run."""
    events = run["events"]
    steps = [e for e in events if e["kind"] == "step"]
    stamps = [e["at"] for e in steps]
    done = next(e for e in events if e["kind"] == "done")
    # Ours reports each step's mean completion length; TRL's worker counts the tokens itself.
    tokens = done.get("tokens") or round(sum(e["completion_length"] * PROMPTS_PER_STEP * GROUP for e in steps))
    return {"median_step": statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)),
            "wall": done["at"], "peak_rss_mib": run["peak_rss_mib"], "tokens": tokens,
            "last_reward": steps[-1].get("reward_mean")}


def describe(result: dict) -> str:
    reward = result["last_reward"]
    return (f"median step {result['median_step']:6.2f} s, wall {result['wall']:6.1f} s, "
            f"peak RSS {result['peak_rss_mib']:6.0f} MiB, {result['tokens']} completion tokens, "
            f"last step's mean reward {'-' if reward is None else f'{reward:.2f}'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (each: 4 prompts x G=4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each trainer, alternating")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trl_worker(args.steps, args.output)
        return

    def run(side: str, output: Path) -> dict:
        if side == "ours":
            return timed_run([sys.executable, "-m", "policies.training", str(our_spec(args.steps, output))],
                             "CAI_PROGRESS ", bench_env())
        return timed_run([sys.executable, __file__, "--worker", "--steps", str(args.steps), "--output", str(output)],
                         "BENCH ", bench_env())

    runs = alternate(["ours", "trl"], args.repeats, run, summarise, describe)
    totals = {}
    for side, results in runs.items():
        totals[side] = {"median_step": statistics.median(r["median_step"] for r in results),
                        "wall": statistics.median(r["wall"] for r in results),
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                        "tokens": round(statistics.median(r["tokens"] for r in results)),
                        "last_reward": results[-1]["last_reward"]}
        print(f"{side:>6}: {describe(totals[side])}")
    ours, trl = totals["ours"], totals["trl"]
    tokens_ratio = ours["tokens"] / trl["tokens"]
    if abs(tokens_ratio - 1) > TOKENS_TOLERANCE:
        print(f"WARNING: the two sides generated different numbers of tokens ({tokens_ratio:.3f}x): not like for like")
    print(f"step_speedup={trl['median_step'] / ours['median_step']:.3f} wall_speedup={trl['wall'] / ours['wall']:.3f} "
          f"rss_ratio={ours['peak_rss_mib'] / trl['peak_rss_mib']:.3f} tokens_ratio={tokens_ratio:.3f}")


if __name__ == "__main__":
    main()
