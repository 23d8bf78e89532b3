"""GRPO on a LoRA policy: PPO without a critic (Shao et al. 2024, "DeepSeekMath", sec. 4), with the variants of
DAPO (Yu et al. 2025: clip-higher, the token-level loss, overlong filtering) and Dr. GRPO (Liu et al. 2025,
"Understanding R1-Zero-Like Training": no std scaling, a constant normaliser).

Each rollout step takes `prompts_per_step` prompts, samples `group_size` completions of each from the current
policy (in-process, or from a vLLM server serving the current adapter), scores every completion with a reward
function (by default the run's rule rewards, `grpo_rewards`) and gives it its reward relative to its group's as
the advantage (`losses.group_advantages`): the group is the baseline, so no value model is trained. Then
`inner_epochs` passes of micro-batches through the shared loop minimise `losses.grpo_policy_loss` against the
log-probs the completions had before the step's first update, plus beta times a k3 KL to the reference (the same
model with its adapter disabled).

A completion that cannot be scored (its reward is None, or the reward function raised: logged, never fatal) gets
advantage 0 and is counted as `unscored`; a group whose rewards are all equal carries no signal and is counted in
`zero_spread_groups`. The checkpoints and the exact resume are PPO's (`rollouts.fit_rollout_steps`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import statistics
from collections.abc import Sequence

import torch

from policies.serving import Conversation, Generator, SamplingParams
from policies.serving.transformers_backend import TransformersGenerator
from policies.training import losses
from policies.training.data import collate_sequences, completion_states
from policies.training.grpo_rewards import GroupRewardFn, GRPOExample, RewardScores, default_reward_fn, parse_example
from policies.training.optimization import TrainingLoop
from policies.training.rollouts import (
    Rollout,
    ServedRollouts,
    adapter_disabled,
    compact,
    fit_rollout_steps,
    sample_rollouts,
    served_rollouts,
)
from policies.training.settings import GRPOSettings
from policies.training.token_logps import projected_logps
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer

log = logging.getLogger(__name__)


def loss_weights(rollouts: Sequence[Rollout], overlong: str) -> torch.Tensor:
    """Each completion's loss weight (n,): 0 for a truncated one under `overlong: mask` (DAPO's overlong
    filtering: an unfinished answer's low reward blames tokens that may be fine), else 1."""
    return torch.tensor([0.0 if overlong == "mask" and r.truncated else 1.0 for r in rollouts])


def trained_rewards(scores: RewardScores, rollouts: Sequence[Rollout], settings: GRPOSettings) -> list[float | None]:
    """The rewards the advantages come from: None where the total is missing or not finite; under `overlong:
    penalty`, a truncated completion's lowered by `overlong_penalty`."""
    rewards: list[float | None] = []
    for (total, _), rollout in zip(scores, rollouts, strict=True):
        if total is None or not math.isfinite(total):
            rewards.append(None)
            continue
        cut = settings.overlong == "penalty" and rollout.truncated
        rewards.append(total - settings.overlong_penalty if cut else float(total))
    return rewards


def group_relative(rewards: Sequence[float | None], group_size: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`losses.group_advantages` over rewards some of which are missing: (advantages (n,), zero-spread groups).

    A missing reward takes its group's mean scored reward (0 when none scored), which leaves the scored
    completions' centring exactly as without it, and then gets advantage 0. (Only the std sees it: under `group`
    or `batch` scaling it is over the filled values, a little smaller than over the scored ones alone.)"""
    filled: list[float] = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        scored = [r for r in group if r is not None]
        mean = sum(scored) / len(scored) if scored else 0.0
        filled += [mean if r is None else r for r in group]
    advantages, zero_spread = losses.group_advantages(torch.tensor(filled), group_size, scale)  # type: ignore[arg-type]
    missing = torch.tensor([r is None for r in rewards])
    return advantages.masked_fill(missing, 0.0), zero_spread


def component_means(scores: RewardScores) -> dict[str, float]:
    """The mean of each reward component (`kind/name`) over the completions it scored."""
    values: dict[str, list[float]] = {}
    for _, components in scores:
        for name, value in components.items():
            if value is not None:
                values.setdefault(name, []).append(value)
    return {name: sum(v) / len(v) for name, v in values.items()}


def token_logps(model, batch: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """log p of each completion token of a collated batch, compacted to the front of its row: (rows, width)."""
    causal_lm, hidden, targets, rows = completion_states(model, batch)
    logps = projected_logps(causal_lm.get_output_embeddings(), hidden, targets)
    mask = batch["completion_mask"][:, 1:].to(logps.device)
    positions = (mask.cumsum(1) - 1)[mask.bool()]
    return logps.new_zeros(mask.shape[0], width).index_put((rows, positions), logps)


def _rows(batch: dict[str, torch.Tensor], indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Some rows of a right-padded batch, cut to the longest of them."""
    sub = {k: v[list(indices)] for k, v in batch.items()}
    length = int(sub["attention_mask"].sum(1).max().item())
    return {k: v[:, :length] for k, v in sub.items()}


class GRPOTrainer:
    heads: tuple[torch.nn.Module, ...] = ()

    def __init__(self, model, tokenizer, settings: GRPOSettings, reward_fn: GroupRewardFn, *,
                 generator: Generator | None = None, served: ServedRollouts | None = None, **loop_options):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.reward_fn = reward_fn
        self.generator = generator or TransformersGenerator(model, tokenizer, name="grpo-policy",
                                                            batch_size=settings.prompts_per_step * settings.group_size)
        self.served = served
        self.loop = TrainingLoop(model, settings, **loop_options)

    def rollout(self, prompts: Sequence[Conversation], seed: int, generator: Generator | None = None) -> list[Rollout]:
        s = self.settings
        self.model.eval()
        return sample_rollouts(generator or self.generator, self.tokenizer, prompts,
                               SamplingParams(s.max_new_tokens, s.temperature, s.top_p, seed), s.max_length)

    def fit(self, data: Sequence[GRPOExample], on_step: OnStep = None) -> TrainResult:
        """`steps` GRPO steps; a checkpoint every `checkpoint_every` of them, and an exact resume from it."""
        s = self.settings
        windows = math.ceil(math.ceil(s.prompts_per_step * s.group_size / s.batch_size) / s.grad_accum)
        return fit_rollout_steps(self, "grpo", data, steps=s.steps, per_step=s.prompts_per_step, seed=s.seed,
                                 checkpoint_every=s.checkpoint_every, total_updates=s.steps * s.inner_epochs * windows,
                                 on_step=on_step)

    def train_step(self, step: int, examples: list[GRPOExample], generator: Generator,
                   seed: int) -> tuple[dict[str, float], list[Rollout]]:
        s = self.settings
        grouped = [e for e in examples for _ in range(s.group_size)]
        rollouts = self.rollout([e.prompt for e in grouped], seed, generator)
        scores = self._score(step, grouped, rollouts)
        rewards = trained_rewards(scores, rollouts, s)
        advantages, zero_spread = group_relative(rewards, s.group_size, s.scale)
        metrics = self._update(rollouts, advantages, loss_weights(rollouts, s.overlong), step)
        scored = [r for r in rewards if r is not None]
        metrics |= {
            "reward_mean": statistics.fmean(scored) if scored else math.nan,
            "reward_std": statistics.pstdev(scored) if len(scored) > 1 else 0.0,
            **component_means(scores),
            "zero_spread_groups": zero_spread.float().mean().item(),
            "unscored": float(len(rewards) - len(scored)),
            "completion_length": statistics.fmean(len(r.completion_ids) for r in rollouts),
            "truncated": statistics.fmean(float(r.truncated) for r in rollouts),
        }
        return metrics, rollouts

    def loop_extra(self) -> dict[str, float]:
        return {}

    def restore(self, extra: dict[str, float]) -> None:
        pass

    def _score(self, step: int, examples: Sequence[GRPOExample], rollouts: Sequence[Rollout]) -> RewardScores:
        """The reward function's scores; a failure leaves the whole step unscored instead of ending the run."""
        try:
            scores = list(self.reward_fn(examples, rollouts))
            if len(scores) != len(rollouts):
                raise ValueError(f"the reward function scored {len(scores)} of {len(rollouts)} completions")
            return scores
        except Exception:
            log.exception("grpo step %d: the reward function failed; its %d completions are unscored",
                          step + 1, len(rollouts))
            return [(None, {}) for _ in rollouts]

    @torch.no_grad()
    def _logps(self, batch: dict[str, torch.Tensor], width: int, reference: bool = False) -> torch.Tensor:
        """Every completion's token log-probs (rows, width) in micro-batches, without grad: under the current
        weights (the old policy of the step), or with the adapter disabled (the reference)."""
        self.model.eval()
        n, size = batch["input_ids"].shape[0], self.settings.batch_size
        pieces = []
        with adapter_disabled(self.model) if reference else contextlib.nullcontext(), self.loop.autocast():
            for start in range(0, n, size):
                pieces.append(token_logps(self.model, _rows(batch, range(start, min(start + size, n))), width))
        return torch.cat(pieces).float()

    def _update(self, rollouts: Sequence[Rollout], advantages: torch.Tensor, weights: torch.Tensor,
                step: int) -> dict[str, float]:
        """`inner_epochs` passes over the step's completions, micro-batches in a (seed, step, epoch) order; the
        window-averaged metrics and the number of optimizer steps (`updates`)."""
        s = self.settings
        batch = collate_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  self.tokenizer.pad_token_id)
        target_mask = batch["completion_mask"][:, 1:]
        width = int(target_mask.sum(1).max().item())
        n = len(rollouts)
        # One pass and one optimizer step: every micro-batch sees the weights the completions were sampled with,
        # so the old log-probs are the current ones, detached (ratio 1, as TRL takes them): no forward pass for them.
        on_policy = s.inner_epochs == 1 and math.ceil(n / s.batch_size) <= s.grad_accum
        old = None if on_policy else self._logps(batch, width)
        ref = self._logps(batch, width, reference=True) if s.beta > 0 else None
        device = self.loop.device
        mask = (compact(target_mask.float(), target_mask, width) * weights[:, None]).to(device)
        advantages = advantages.to(device)
        # DAPO divides a window's summed token losses by the tokens of one window (TRL: the step's tokens times
        # the window's share of its completions). The loop weights each micro-batch's loss by its share of the
        # window, so a micro-batch divides by the step's tokens times its own share: summed, that is exactly it.
        step_tokens = max(float(mask.sum().item()), 1.0)

        def loss_fn(indices: list[int]):
            logps = token_logps(self.model, _rows(batch, indices), width)
            m = mask[indices]
            loss, metrics = losses.grpo_policy_loss(
                logps, logps.detach() if old is None else old[indices], advantages[indices], m,
                clip_low=s.clip_low, clip_high=s.clip_high,
                level=s.importance_level, aggregation=s.loss_type, max_completion_length=s.max_new_tokens,
                ref_logprobs=None if ref is None else ref[indices], beta=s.beta,
                num_tokens=step_tokens * len(indices) / n if s.loss_type == "dapo" else None)
            return loss, {k: v.item() for k, v in metrics.items()}, int(m.sum().item())

        totals: dict[str, float] = {}
        updates = 0
        for epoch in range(s.inner_epochs):
            order = list(range(n))
            random.Random(f"{s.seed}:{step}:{epoch}").shuffle(order)
            plan = [order[i:i + s.batch_size] for i in range(0, n, s.batch_size)]
            for window in (plan[i:i + s.grad_accum] for i in range(0, len(plan), s.grad_accum)):
                metrics, _ = self.loop.step_window(window, loss_fn)
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        return {**{k: v / updates for k, v in totals.items()}, "updates": float(updates)}


@register_trainer("grpo", parse=parse_example)
def build_grpo_trainer(ctx: BuildContext) -> GRPOTrainer:
    spec = ctx.spec
    reward_fn = default_reward_fn(spec)  # first: a reward the trainer cannot build fails before anything runs
    return GRPOTrainer(ctx.lm, ctx.tokenizer, ctx.settings, reward_fn,
                       served=served_rollouts(spec, ctx.lm, "grpo", ctx.tokenizer), **ctx.loop_options)
