"""DPO on preference pairs, training a LoRA adapter; the reference is the same model with adapters off."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from policies.losses import dpo_loss
from policies.preference_data import EncodedPair, PreferenceExample, collate, completion_logps, encode_pair

log = logging.getLogger(__name__)


class DPOSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    learning_rate: float = Field(default=5e-4, gt=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=16)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class DPOStats:
    """Means over a dataset, all under the current policy against the reference."""

    loss: float
    reward_margin: float
    reward_accuracy: float
    chosen_reward: float
    rejected_reward: float


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float
    reward_margin: float
    tokens_per_s: float


@dataclass(frozen=True)
class DPOResult:
    before: DPOStats
    after: DPOStats
    steps: list[StepLog]
    tokens_per_s: float

    def metrics(self) -> dict[str, float]:
        flat = {f"{k}_before": v for k, v in asdict(self.before).items()}
        flat |= {f"{k}_after": v for k, v in asdict(self.after).items()}
        return flat | {"optimizer_steps": float(len(self.steps)), "tokens_per_s": self.tokens_per_s}


def _stats(policy: tuple[list, list], ref: tuple[list, list], settings: DPOSettings) -> DPOStats:
    """Dataset means from per-batch (chosen, rejected) log-prob lists."""
    logps = [torch.cat(part) for part in (*policy, *ref)]
    losses, chosen, rejected = dpo_loss(*logps, beta=settings.beta, label_smoothing=settings.label_smoothing)
    margin = chosen - rejected
    return DPOStats(losses.mean().item(), margin.mean().item(), (margin > 0).float().mean().item(),
                    chosen.mean().item(), rejected.mean().item())


class DPOTrainer:
    """Trains the adapter of a PEFT model in place.

    Reference log-probs are computed once per dataset with the adapter disabled, so no second copy of the
    model is held in memory.
    """

    def __init__(self, model, tokenizer, settings: DPOSettings):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings

    def train(self, examples: Sequence[PreferenceExample],
              progress: Callable[[StepLog], None] | None = None) -> DPOResult:
        s = self.settings
        if not examples:
            raise ValueError("DPO needs at least one preference pair")
        pairs = [encode_pair(self.tokenizer, e, s.max_length) for e in examples]
        batches = [pairs[i:i + s.batch_size] for i in range(0, len(pairs), s.batch_size)]
        reference = self._logps(batches, adapter=False)
        before = _stats(self._logps(batches, adapter=True), reference, s)

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.learning_rate)
        order = list(range(len(batches)))
        rng = random.Random(s.seed)
        steps: list[StepLog] = []
        micro = 0
        tokens = 0
        started = time.perf_counter()
        window: list[tuple[float, float]] = []
        self.model.train()
        for _ in range(s.epochs):
            rng.shuffle(order)
            for index in order:
                chosen, rejected = completion_logps(self.model, collate(batches[index], self._pad_id))
                ref_chosen, ref_rejected = (t[index] for t in reference)
                losses, c_rew, r_rew = dpo_loss(chosen, rejected, ref_chosen, ref_rejected,
                                                beta=s.beta, label_smoothing=s.label_smoothing)
                (losses.mean() / s.grad_accum).backward()
                window.append((losses.mean().item(), (c_rew - r_rew).mean().item()))
                tokens += sum(p.tokens for p in batches[index])
                micro += 1
                if micro % s.grad_accum == 0 or micro == s.epochs * len(batches):
                    torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    elapsed = time.perf_counter() - started
                    step = StepLog(len(steps) + 1, sum(w[0] for w in window) / len(window),
                                   sum(w[1] for w in window) / len(window), tokens / elapsed)
                    steps.append(step)
                    window.clear()
                    log.info("dpo step %d loss %.4f margin %.4f", step.step, step.loss, step.reward_margin)
                    if progress:
                        progress(step)
        tokens_per_s = tokens / (time.perf_counter() - started)
        after = _stats(self._logps(batches, adapter=True), reference, s)
        if not all(math.isfinite(v) for v in asdict(after).values()):
            raise FloatingPointError(f"DPO diverged: {after}")
        self.model.eval()
        return DPOResult(before, after, steps, tokens_per_s)

    @property
    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def _logps(self, batches: list[list[EncodedPair]], *, adapter: bool) -> tuple[list, list]:
        """Per-batch (chosen, rejected) log-probs without gradients, with or without the adapter."""
        self.model.eval()
        chosen, rejected = [], []
        context = contextlib.nullcontext() if adapter else self.model.disable_adapter()
        with context, torch.no_grad():
            for batch in batches:
                c, r = completion_logps(self.model, collate(batch, self._pad_id))
                chosen.append(c)
                rejected.append(r)
        return chosen, rejected
