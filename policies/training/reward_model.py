"""The reward model: LoRA on the base plus a scalar head, trained with the Bradley-Terry loss on the judge's
pairs, and an evaluation harness (held-out accuracy, calibration, agreement with the judge, length bias)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from policies.training.batching import plan_batches
from policies.training.data import EncodedPair, PreferenceExample, collate, encode_pair
from policies.training.heads import ScalarHead, hidden_size, last_hidden
from policies.training.losses import bradley_terry_loss
from policies.training.optimization import TrainingLoop
from policies.training.preference import parse_pair
from policies.training.settings import RewardModelSettings
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer


class RewardModel(torch.nn.Module):
    """Scores a (prompt, response) sequence: the head applied at its last real token."""

    def __init__(self, lm, head: ScalarHead):
        super().__init__()
        self.lm = lm
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _, hidden = last_hidden(self.lm, input_ids, attention_mask)
        last = attention_mask.sum(1) - 1
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def score_pairs(self, pairs: Sequence[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collate(pairs, pad_id)
        device = next(self.parameters()).device
        scores = self(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return scores[: len(pairs)], scores[len(pairs):]

    @classmethod
    def fresh(cls, lm) -> RewardModel:
        return cls(lm, ScalarHead(hidden_size(lm)).to(next(lm.parameters()).device))

    @classmethod
    def load(cls, lm, directory: Path) -> RewardModel:
        return cls(lm, ScalarHead.load(directory, hidden_size(lm)).to(next(lm.parameters()).device))


@dataclass(frozen=True)
class RewardEval:
    pairs: int
    accuracy: float
    ece: float
    """Expected calibration error of sigmoid(r_chosen - r_rejected) as p(chosen better)."""
    judge_mae: float
    """Mean |sigmoid(r_chosen - r_rejected) - judge probability|."""
    judge_correlation: float
    length_correlation: float
    """Pearson correlation of score with response length in tokens (high means a length-hacking risk)."""


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) < 2:
        return float("nan")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    if sx == 0 or sy == 0:
        return float("nan")
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (sx * sy)


def expected_calibration_error(p_chosen: Sequence[float], bins: int) -> float:
    """ECE of the predicted side: confidence max(p, 1-p) against whether the chosen side was predicted."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, sum confidence, sum correct
    for p in p_chosen:
        confidence = max(p, 1 - p)
        slot = min(int((confidence - 0.5) * 2 * bins), bins - 1)
        totals[slot][0] += 1
        totals[slot][1] += confidence
        totals[slot][2] += float(p > 0.5)
    n = len(p_chosen)
    return sum(abs(c / k - ok / k) * k / n for k, c, ok in totals if k) if n else float("nan")


def split_held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    held = min(max(1, round(n * fraction)), n - 1) if fraction > 0 and n >= 2 else 0
    return sorted(indices[held:]), sorted(indices[:held])


class RewardModelTrainer:
    def __init__(self, model: RewardModel, tokenizer, settings: RewardModelSettings, **loop_options):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.loop = TrainingLoop(model, settings, **loop_options)
        self.heads = (model.head,)

    def fit(self, data: Sequence[PreferenceExample], on_step: OnStep = None) -> TrainResult:
        s, examples = self.settings, data
        if len(examples) < 1:
            raise ValueError("reward-model training needs at least one preference pair")
        pairs = [encode_pair(self.tokenizer, e, s.max_length) for e in examples]
        targets = [e.target for e in examples]
        train_idx, held_idx = split_held_out(len(pairs), s.eval_fraction, s.seed)
        lengths = [pairs[i].tokens for i in train_idx]

        def loss_fn(batch: list[int]):
            chosen_pairs = [pairs[train_idx[i]] for i in batch]
            chosen, rejected = self.model.score_pairs(chosen_pairs, self.tokenizer.pad_token_id)
            margin = None
            if s.margin_from_labels:
                p = torch.tensor([targets[train_idx[i]] for i in batch], device=chosen.device).clamp(0.5, 1 - 1e-4)
                margin = torch.log(p / (1 - p))
            loss = bradley_terry_loss(chosen, rejected, margin).mean()
            return loss, {"accuracy": (chosen > rejected).float().mean().item()}, sum(p.tokens for p in chosen_pairs)

        steps = self.loop.run(
            lambda epoch: plan_batches(lengths, s.batch_size, seed=s.seed, epoch=epoch, bucketing=s.length_bucketing),
            loss_fn, on_step)
        evaluated = held_idx or train_idx  # with a single pair there is nothing to hold out
        evaluation = self.evaluate([pairs[i] for i in evaluated], [targets[i] for i in evaluated])
        return TrainResult(reward_eval_metrics(evaluation) | {"rm_optimizer_steps": float(len(steps))}, steps)

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[EncodedPair], targets: Sequence[float]) -> RewardEval:
        self.model.eval()
        chosen, rejected = [], []
        for start in range(0, len(pairs), self.settings.batch_size):
            c, r = self.model.score_pairs(pairs[start:start + self.settings.batch_size], self.tokenizer.pad_token_id)
            chosen += c.float().tolist()
            rejected += r.float().tolist()
        p_chosen = [1 / (1 + math.exp(r - c)) for c, r in zip(chosen, rejected, strict=True)]
        scores = chosen + rejected
        lengths = [len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs]
        return RewardEval(
            pairs=len(pairs),
            accuracy=sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs),
            ece=expected_calibration_error(p_chosen, self.settings.calibration_bins),
            judge_mae=sum(abs(p - t) for p, t in zip(p_chosen, targets, strict=True)) / len(pairs),
            judge_correlation=pearson(p_chosen, list(targets)),
            length_correlation=pearson(scores, [float(n) for n in lengths]),
        )


def reward_eval_metrics(result: RewardEval) -> dict[str, float]:
    return {f"rm_{k}": float(v) for k, v in asdict(result).items()}


@register_trainer("reward_model", parse=parse_pair)
def build_reward_model_trainer(ctx: BuildContext) -> RewardModelTrainer:
    model = RewardModel.fresh(ctx.lm)
    return RewardModelTrainer(model, ctx.tokenizer, ctx.settings, **ctx.loop_options)
