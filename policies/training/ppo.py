"""PPO on a LoRA policy with a value head (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019).

Each step: roll out completions through a `Generator` (the policy itself in-process, or a vLLM server serving
the current adapter), score them with a reward function (the reward model, or any rule), subtract a per-token
KL penalty to the reference (the same model with the adapter disabled), estimate advantages with GAE, then run
a few epochs of clipped policy and value updates.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from policies.serving import Conversation, Generator, SamplingParams
from policies.serving.transformers_backend import TransformersGenerator
from policies.training import losses
from policies.training.checkpoints import LoopState
from policies.training.data import collate_sequences, encode_completions, encode_prompt
from policies.training.heads import ScalarHead, hidden_size, last_hidden
from policies.training.optimization import StepLog, TrainingLoop
from policies.training.settings import PPOSettings
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    prompt: Conversation
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]


RewardFn = Callable[[Sequence[Rollout]], list[float]]


class ServedRollouts:
    """Rollouts from a vLLM server that serves the base model: before each rollout batch the adapter being
    trained is saved and loaded under a new name (the previous one unloaded), so every batch is sampled from
    the current weights. The server returns text, which is re-tokenised for scoring."""

    def __init__(self, url: str, lm, directory: Path, prefix: str):
        from policies.serving.vllm_client import VllmAdmin

        self.url, self.lm, self.directory, self.prefix = url, lm, directory, prefix
        self.admin = VllmAdmin(url)
        self.loaded: str | None = None

    def __call__(self, step: int) -> Generator:
        from policies.adapters import save_adapter
        from policies.serving.vllm_client import VllmServerGenerator

        name = f"{self.prefix}-step{step}"
        self.admin.load_adapter(name, save_adapter(self.lm, self.directory / f"step-{step}"))
        self.close()
        self.loaded = name
        return VllmServerGenerator(self.url, name)

    def close(self) -> None:
        if self.loaded is not None:
            self.admin.unload_adapter(self.loaded)
            self.loaded = None


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


def _compact(values: torch.Tensor, mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Move the completion positions of each row to the front: (N, L) → (N, T), right-padded with zeros."""
    width = width or int(mask.sum(1).max().item())
    out = values.new_zeros(values.shape[0], width)
    for row in range(values.shape[0]):
        picked = values[row][mask[row].bool()]
        out[row, : picked.shape[0]] = picked
    return out


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
        generator = generator or self.generator
        self.model.eval()
        params = SamplingParams(s.max_new_tokens, s.temperature, s.top_p, seed)
        rollouts = []
        if hasattr(generator, "generate_tokens"):
            sampled = generator.generate_tokens(prompts, params)
            for prompt, completion in zip(prompts, sampled, strict=True):
                prompt_ids = encode_prompt(self.tokenizer, prompt)[-max(1, s.max_length - len(completion)):]
                text = self.tokenizer.decode(completion, skip_special_tokens=True).strip()
                rollouts.append(Rollout(prompt, text, prompt_ids, completion or [self.tokenizer.eos_token_id]))
            return rollouts
        # A remote server returns text: score the re-tokenised reply, end-of-turn marker included.
        for prompt, text in zip(prompts, generator.generate(prompts, params), strict=True):
            prompt_ids, (completion,) = encode_completions(self.tokenizer, prompt, [text], s.max_length)
            rollouts.append(Rollout(prompt, text, prompt_ids, completion))
        return rollouts

    def fit(self, data: Sequence[Conversation], on_step: OnStep = None) -> TrainResult:
        """`rollouts` PPO steps through the shared loop: a checkpoint every `checkpoint_every` rollout steps
        holds the adapter, value head, optimizer, schedule, RNG and KL coefficient, and a restart resumes from it
        exactly (rollout seeds and minibatch orders derive from (seed, step))."""
        prompts = data
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        s = self.settings
        windows = math.ceil(math.ceil(s.rollout_batch_size / s.batch_size) / s.grad_accum)
        self.loop.prepare(s.rollouts * s.ppo_epochs * windows)
        state = self.loop.resume()
        self.kl.kl_coef = state.extra.get("kl_coef", self.kl.kl_coef)
        order = list(prompts)
        random.Random(s.seed).shuffle(order)
        logs: list[StepLog] = []
        for step in range(state.epoch, s.rollouts):
            started = time.perf_counter()
            chunk = [order[(step * s.rollout_batch_size + k) % len(order)] for k in range(s.rollout_batch_size)]
            generator = self.served(step) if self.served else self.generator
            rollouts = self.rollout(chunk, seed=s.seed * 7919 + step, generator=generator)
            scores = torch.tensor(self.reward_fn(rollouts), dtype=torch.float32)
            metrics = self._update(rollouts, scores, step)
            metrics |= {"reward_mean": scores.mean().item(),
                        "reward_std": statistics.pstdev(scores.tolist()) if len(scores) > 1 else 0.0,
                        "kl_coef": self.kl.kl_coef}
            self.kl.update(metrics["kl"], len(rollouts))
            tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
            state = LoopState(step=state.step + int(metrics["updates"]), epoch=step + 1,
                              extra={"kl_coef": self.kl.kl_coef})
            record = StepLog(step + 1, 0, metrics, tokens / (time.perf_counter() - started))
            logs.append(record)
            log.info("ppo step %d reward %.4f kl %.4f", record.step, metrics["reward_mean"], metrics["kl"])
            if on_step:
                on_step(record)
            if s.checkpoint_every and (step + 1) % s.checkpoint_every == 0:
                self.loop.checkpoint(state)
        if self.served:
            self.served.close()
        self.model.eval()
        metrics = {f"ppo_{k}_first": v for k, v in logs[0].metrics.items()} if logs else {}
        metrics |= {f"ppo_{k}_last": v for k, v in logs[-1].metrics.items()} if logs else {}
        return TrainResult(metrics, logs)

    def _update(self, rollouts: Sequence[Rollout], scores: torch.Tensor, step: int) -> dict[str, float]:
        s = self.settings
        batch = collate_sequences([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                                  self.tokenizer.pad_token_id)
        target_mask = batch["completion_mask"][:, 1:]
        with torch.no_grad():
            old_logps, _, old_values = (_compact(t, target_mask) for t in self.model(batch))
            with self._adapter_disabled():
                ref_logps = _compact(self.model(batch)[0], target_mask)
        mask = _compact(target_mask.float(), target_mask)
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
            logps, entropy, values = (_compact(t, target_mask[indices], width) for t in self.model(sub))
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
        lm = self.model.lm
        return lm.disable_adapter() if hasattr(lm, "disable_adapter") else contextlib.nullcontext()


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
    served = None
    if spec.rollout_server:
        prefix = "ppo-" + hashlib.sha256(str(spec.output_dir.resolve()).encode()).hexdigest()[:10]
        served = ServedRollouts(spec.rollout_server, ctx.lm, spec.output_dir / "rollout-adapters", prefix)
    model = PolicyWithValue(ctx.lm)
    return PPOTrainer(model, ctx.tokenizer, ctx.settings, reward_model_scorer(spec, ctx.tokenizer), served=served,
                      **ctx.loop_options)
