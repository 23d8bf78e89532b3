"""What the on-policy trainers (PPO, GRPO) share: sampling rollouts from the policy (in-process or from a vLLM
server serving the current adapter), the reference as the model with its adapter disabled, and the outer loop of
rollout steps with its checkpoints and exact resume.

Every rollout step is a function of (seed, step) and the weights: the prompts are the seeded order's next chunk
(cycled), the sampling seed derives from (seed, step), and the trainers derive their minibatch orders the same
way, so a run restarted from a checkpoint takes the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from policies.serving import Conversation, Generator, SamplingParams
from policies.serving.control_tokens import specials_of
from policies.training.checkpoints import LoopState
from policies.training.data import encode_completions, encode_prompt
from policies.training.optimization import StepLog, TrainingLoop
from policies.training.trainer import OnStep, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    prompt: Conversation
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool = False
    """Cut at `max_new_tokens` without an end-of-sequence token (for served text: estimated from its length)."""


class ServedRollouts:
    """Rollouts from a vLLM server that serves the base model: before each rollout batch the adapter being
    trained is saved and loaded under a new name (the previous one unloaded), so every batch is sampled from
    the current weights. The server returns text, which is re-tokenised for scoring. `specials`: the model's
    control-token strings, neutralised in the prompts sent (default: the common templates')."""

    def __init__(self, url: str, lm, directory: Path, prefix: str, specials: Sequence[str] | None = None):
        from policies.serving.vllm_client import VllmAdmin

        self.url, self.lm, self.directory, self.prefix = url, lm, directory, prefix
        self.specials = specials
        self.admin = VllmAdmin(url)
        self.loaded: str | None = None

    def __call__(self, step: int) -> Generator:
        from policies.adapters import save_adapter
        from policies.serving.vllm_client import VllmServerGenerator

        name = f"{self.prefix}-step{step}"
        self.admin.load_adapter(name, save_adapter(self.lm, self.directory / f"step-{step}"))
        self.close()
        self.loaded = name
        return VllmServerGenerator(self.url, name, specials=self.specials)

    def close(self) -> None:
        if self.loaded is not None:
            self.admin.unload_adapter(self.loaded)
            self.loaded = None


def served_rollouts(spec, lm, kind: str, tokenizer) -> ServedRollouts | None:
    """The spec's rollout server, if it names one; adapter names are unique to the run's output folder."""
    if not spec.rollout_server:
        return None
    prefix = f"{kind}-" + hashlib.sha256(str(spec.output_dir.resolve()).encode()).hexdigest()[:10]
    return ServedRollouts(spec.rollout_server, lm, spec.output_dir / "rollout-adapters", prefix,
                          specials_of(tokenizer))


def _end_ids(generator: Generator, tokenizer) -> set[int]:
    # The ids generation stops at: the tokenizer's eos and the model's own end-of-turn tokens.
    eos = getattr(getattr(getattr(generator, "model", None), "generation_config", None), "eos_token_id", None)
    return {tokenizer.eos_token_id, *([] if eos is None else [eos] if isinstance(eos, int) else eos)}


def sample_rollouts(generator: Generator, tokenizer, prompts: Sequence[Conversation], params: SamplingParams,
                    max_length: int) -> list[Rollout]:
    """Sample one completion per prompt; keep the exact sampled tokens when the generator can return them."""
    rollouts = []
    if hasattr(generator, "generate_tokens"):
        ends = _end_ids(generator, tokenizer)
        sampled = generator.generate_tokens(prompts, params)
        for prompt, completion in zip(prompts, sampled, strict=True):
            prompt_ids = encode_prompt(tokenizer, prompt)[-max(1, max_length - len(completion)):]
            text = tokenizer.decode(completion, skip_special_tokens=True).strip()
            truncated = len(completion) >= params.max_new_tokens and completion[-1] not in ends
            rollouts.append(Rollout(prompt, text, prompt_ids, completion or [tokenizer.eos_token_id], truncated))
        return rollouts
    # A remote server returns text: score the re-tokenised reply, end-of-turn marker included.
    for prompt, text in zip(prompts, generator.generate(prompts, params), strict=True):
        prompt_ids, (completion,) = encode_completions(tokenizer, prompt, [text], max_length)
        # The text no longer says whether it stopped or was cut: a reply as long as the limit counts as cut.
        truncated = len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= params.max_new_tokens
        rollouts.append(Rollout(prompt, text, prompt_ids, completion, truncated))
    return rollouts


def compact(values: torch.Tensor, mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Move the completion positions of each row to the front: (N, L) → (N, T), right-padded with zeros."""
    width = width or int(mask.sum(1).max().item())
    out = values.new_zeros(values.shape[0], width)
    for row in range(values.shape[0]):
        picked = values[row][mask[row].bool()]
        out[row, : picked.shape[0]] = picked
    return out


def adapter_disabled(lm):
    """The reference: the same model with its adapter disabled."""
    return lm.disable_adapter() if hasattr(lm, "disable_adapter") else contextlib.nullcontext()


class RolloutTrainer(Protocol):
    """What `fit_rollout_steps` drives: a trainer that takes one rollout step at a time."""

    loop: TrainingLoop
    generator: Generator
    served: ServedRollouts | None

    def train_step(self, step: int, prompts: list[Any], generator: Generator,
                   seed: int) -> tuple[dict[str, float], Sequence[Rollout]]:
        """Sample (with `seed`), score and train on one step's prompts: (metrics, holding `updates`, `reward_mean`
        and `kl`; the rollouts)."""
        ...

    def loop_extra(self) -> dict[str, float]:
        """Trainer state to checkpoint beside the optimizer's (e.g. PPO's adaptive KL coefficient)."""
        ...

    def restore(self, extra: dict[str, float]) -> None:
        """Take back what `loop_extra` saved (an empty dict on a fresh start)."""
        ...


def fit_rollout_steps(trainer: RolloutTrainer, kind: str, data: Sequence[Any], *, steps: int, per_step: int,
                      seed: int, checkpoint_every: int, total_updates: int, on_step: OnStep = None) -> TrainResult:
    """`steps` rollout steps of `per_step` prompts through the shared loop: a checkpoint every `checkpoint_every`
    rollout steps holds the adapter, optimizer, schedule, RNG and `loop_extra`, and a restart resumes from it
    exactly. The result's metrics are the first and last step's, as `{kind}_{name}_first` / `_last`."""
    if not data:
        raise ValueError(f"{kind.upper()} needs at least one prompt")
    trainer.loop.prepare(total_updates)
    state = trainer.loop.resume()
    trainer.restore(state.extra)
    order = list(data)
    random.Random(seed).shuffle(order)
    logs: list[StepLog] = []
    for step in range(state.epoch, steps):
        started = time.perf_counter()
        chunk = [order[(step * per_step + k) % len(order)] for k in range(per_step)]
        generator = trainer.served(step) if trainer.served else trainer.generator
        metrics, rollouts = trainer.train_step(step, chunk, generator, seed * 7919 + step)
        tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
        state = LoopState(step=state.step + int(metrics["updates"]), epoch=step + 1, extra=trainer.loop_extra())
        record = StepLog(step + 1, 0, metrics, tokens / (time.perf_counter() - started))
        logs.append(record)
        log.info("%s step %d reward %.4f kl %.4f", kind, record.step, metrics["reward_mean"], metrics["kl"])
        if on_step:
            on_step(record)
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            trainer.loop.checkpoint(state)
    if trainer.served:
        trainer.served.close()
    trainer.loop.model.eval()
    metrics = {f"{kind}_{k}_first": v for k, v in logs[0].metrics.items()} if logs else {}
    metrics |= {f"{kind}_{k}_last": v for k, v in logs[-1].metrics.items()} if logs else {}
    return TrainResult(metrics, logs)
