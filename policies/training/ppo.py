"""PPO on a LoRA policy with a value head (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019).

Each step: roll out completions through a `Generator` (the policy itself in-process, or a vLLM server serving
the current adapter), score them with a reward function (the reward model, or any rule), subtract a per-token
KL penalty to the reference (the same model with the adapter disabled), estimate advantages with GAE, then run
a few epochs of clipped policy and value updates.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

import torch

from policies.serving import Conversation, Generator, SamplingParams
from policies.serving.transformers_backend import TransformersGenerator
from policies.training import losses
from policies.training.data import collate_sequences
from policies.training.heads import ScalarHead, hidden_size, last_hidden
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
from policies.training.settings import PPOSettings
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer

RewardFn = Callable[[Sequence[Rollout]], list[float]]


class PolicyWithValue(torch.nn.Module):
    """The policy LM and a value head sharing one forward pass; one module so one optimizer trains both."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = ScalarHead(hidden_size(lm)).to(next(lm.parameters()).device)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per target position (N, L-1): token log-probs, entropies and values."""
        device = next(self.parameters()).device
        ids = batch["input_ids"].to(device)
        outputs, hidden = last_hidden(self.lm, ids, batch["attention_mask"].to(device))
        logits = outputs.logits[:, :-1].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        token_logps = torch.gather(logp_all, 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        # The value of the state that predicts token t+1 is read at position t.
        values = self.value_head(hidden[:, :-1].float())
        return token_logps, entropy, values


class PPOTrainer:
    heads: tuple[torch.nn.Module, ...] = ()

    def __init__(self, model: PolicyWithValue, tokenizer, settings: PPOSettings, reward_fn: RewardFn, *,
                 generator: Generator | None = None, served: ServedRollouts | None = None, **loop_options):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.reward_fn = reward_fn
        self.generator = generator or TransformersGenerator(model.lm, tokenizer, name="ppo-policy",
                                                            batch_size=settings.rollout_batch_size)
        self.served = served
        self.loop = TrainingLoop(model, settings, **loop_options)
        self.kl = (losses.AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                   if settings.adaptive_kl else losses.FixedKLController(settings.kl_coef))

    def rollout(self, prompts: Sequence[Conversation], seed: int, generator: Generator | None = None) -> list[Rollout]:
        """Sample completions; keep the exact sampled tokens when the generator can return them."""
        s = self.settings
        self.model.eval()
        return sample_rollouts(generator or self.generator, self.tokenizer, prompts,
                               SamplingParams(s.max_new_tokens, s.temperature, s.top_p, seed), s.max_length)

    def fit(self, data: Sequence[Conversation], on_step: OnStep = None) -> TrainResult:
        """`rollouts` PPO steps through the shared loop (`rollouts.fit_rollout_steps`): a checkpoint every
        `checkpoint_every` rollout steps holds the adapter, value head, optimizer, schedule, RNG and KL coefficient,
        and a restart resumes from it exactly (rollout seeds and minibatch orders derive from (seed, step))."""
        s = self.settings
        windows = math.ceil(math.ceil(s.rollout_batch_size / s.batch_size) / s.grad_accum)
        return fit_rollout_steps(self, "ppo", data, steps=s.rollouts, per_step=s.rollout_batch_size, seed=s.seed,
                                 checkpoint_every=s.checkpoint_every, total_updates=s.rollouts * s.ppo_epochs * windows,
                                 on_step=on_step)

    def train_step(self, step: int, prompts: list[Conversation], generator: Generator,
                   seed: int) -> tuple[dict[str, float], list[Rollout]]:
        rollouts = self.rollout(prompts, seed=seed, generator=generator)
        scores = torch.tensor(self.reward_fn(rollouts), dtype=torch.float32)
        metrics = self._update(rollouts, scores, step)
        metrics |= {"reward_mean": scores.mean().item(),
                    "reward_std": statistics.pstdev(scores.tolist()) if len(scores) > 1 else 0.0,
                    "kl_coef": self.kl.kl_coef}
        self.kl.update(metrics["kl"], len(rollouts))
        return metrics, rollouts

    def loop_extra(self) -> dict[str, float]:
        return {"kl_coef": self.kl.kl_coef}

    def restore(self, extra: dict[str, float]) -> None:
        self.kl.kl_coef = extra.get("kl_coef", self.kl.kl_coef)

    def _update(self, rollouts: Sequence[Rollout], scores: torch.Tensor, step: int) -> dict[str, float]:
        s = self.settings
        batch = collate_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  self.tokenizer.pad_token_id)
        target_mask = batch["completion_mask"][:, 1:]
        with torch.no_grad():
            old_logps, _, old_values = (compact(t, target_mask) for t in self.model(batch))
            with self._adapter_disabled():
                ref_logps = compact(self.model(batch)[0], target_mask)
        mask = compact(target_mask.float(), target_mask)
        kl_tokens = losses.kl_penalty(old_logps, ref_logps, s.kl_estimator) * mask
        rewards = -self.kl.kl_coef * kl_tokens
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(rollouts)), last] += scores.to(rewards.device)
        advantages, returns = losses.gae(rewards, old_values, mask, gamma=s.gamma, lam=s.lam)
        if s.whiten_advantages and mask.sum() > 1:
            advantages = losses.whiten(advantages, mask)

        sums: dict[str, float] = {}
        n = len(rollouts)

        def loss_fn(indices: list[int]):
            sub = {k: v[indices] for k, v in batch.items()}
            width = old_logps.shape[1]
            logps, entropy, values = (compact(t, target_mask[indices], width) for t in self.model(sub))
            m = mask[indices]
            pg_loss, clip_frac = losses.ppo_policy_loss(logps, old_logps[indices], advantages[indices], m,
                                                        clip_range=s.clip_range)
            vf_loss, vf_clip = losses.ppo_value_loss(values, old_values[indices], returns[indices], m,
                                                     clip_range_value=s.clip_range_value)
            metrics = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "clip_fraction": clip_frac.item(),
                       "value_clip_fraction": vf_clip.item(),
                       "entropy": losses.masked_mean(entropy.detach(), m).item()}
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * len(indices)
            return pg_loss + s.value_coef * vf_loss, metrics, int(m.sum().item())

        updates = 0
        for epoch in range(s.ppo_epochs):
            plan = [list(range(i, min(i + s.batch_size, n))) for i in range(0, n, s.batch_size)]
            random.Random(f"{s.seed}:{step}:{epoch}").shuffle(plan)
            for window in (plan[i:i + s.grad_accum] for i in range(0, len(plan), s.grad_accum)):
                self.loop.step_window(window, loss_fn)
                updates += 1
        count = n * s.ppo_epochs
        sequence_kl = (kl_tokens.sum(1)).mean().item()
        return {**{k: v / count for k, v in sums.items()}, "kl": sequence_kl, "updates": float(updates)}

    def _adapter_disabled(self):
        return adapter_disabled(self.model.lm)


def reward_model_scorer(spec, tokenizer) -> RewardFn:
    """Score rollouts with a trained reward model (a second, frozen copy: its adapter differs from the policy's)."""
    from policies.models import load_model
    from policies.training.reward_model import RewardModel

    if spec.reward_model_dir is None:
        raise ValueError("PPO needs `reward_model_dir`: train a reward model first")
    base, _ = load_model(spec.model_dir, dtype=spec.dtype, device=spec.device, adapter=spec.reward_model_dir)
    scorer = RewardModel.load(base, spec.reward_model_dir).eval()

    @torch.no_grad()
    def score(rollouts: Sequence[Rollout]) -> list[float]:
        batch = collate_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  tokenizer.pad_token_id)
        device = next(scorer.parameters()).device
        return scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().tolist()

    return score


@register_trainer("ppo", parse=lambda record: record["prompt"])
def build_ppo_trainer(ctx: BuildContext) -> PPOTrainer:
    spec = ctx.spec
    served = served_rollouts(spec, ctx.lm, "ppo", ctx.tokenizer)
    model = PolicyWithValue(ctx.lm)
    return PPOTrainer(model, ctx.tokenizer, ctx.settings, reward_model_scorer(spec, ctx.tokenizer), served=served,
                      **ctx.loop_options)
