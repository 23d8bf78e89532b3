"""Preference training on pairs: the DPO family (DPO, cDPO, IPO, robust DPO, hinge), SimPO, ORPO and KTO,
all on a LoRA adapter. The reference is the same model with the adapter disabled.

Each micro-batch is scored with its prompts computed once (prefix sharing, `data.pack_shared_prefix`), and the
objective comes from the registry in `policies.training.objectives`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from policies.training import losses
from policies.training.batching import plan_batches
from policies.training.data import (
    EncodedPair,
    PreferenceExample,
    collate_sequences,
    encode_pair,
    pack_shared_prefix,
    sequence_logps,
    shared_prefix_logps,
)
from policies.training.objectives import OBJECTIVES, PairBatch
from policies.training.optimization import TrainingLoop
from policies.training.reference_cache import ReferenceCache
from policies.training.settings import PreferenceSettings
from policies.training.shared_prefix_attention import use_shared_prefix_attention
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer


@dataclass(frozen=True)
class PreferenceStats:
    """Means over the evaluation sample under the current policy."""

    loss: float
    reward_margin: float
    reward_accuracy: float
    chosen_reward: float
    rejected_reward: float
    kl: float
    """Mean log pi/pi_ref over the chosen completions (a k1 estimate of the sequence KL); NaN for the
    reference-free losses, which never compute the reference."""
    chosen_nll: float
    """The chosen answers' per-token NLL (RPO's term, whether or not it is trained on)."""


@dataclass
class _Logps:
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


def adapter_is_identity(model) -> bool:
    """True when every LoRA B matrix is zero: the adapter adds nothing, so the policy equals the reference."""
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(lora_b) and all(not p.detach().any() for p in lora_b)


def parse_pair(record: Mapping[str, Any]) -> PreferenceExample:
    return PreferenceExample(record["prompt"], record["chosen"], record["rejected"], record.get("target", 1.0))


class PreferenceTrainer:
    heads: tuple[torch.nn.Module, ...] = ()

    def __init__(self, model, tokenizer, settings: PreferenceSettings, *, checkpoint_dir: Path | None = None,
                 reference_cache: ReferenceCache | None = None, **loop_options):
        self.model = model
        self.reference_cache = reference_cache
        self.reference_scored = 0
        """Pairs whose reference log-probs this trainer computed (the others came from a cache)."""
        use_shared_prefix_attention(model)
        self.tokenizer = tokenizer
        self.settings = settings
        self.objective = OBJECTIVES[settings.loss]
        self.checkpoint_dir = checkpoint_dir
        self.loop = TrainingLoop(model, settings, checkpoint_dir, **loop_options)
        self.pad_id = tokenizer.pad_token_id
        # A row holds any single pair (at most 2 * max_length tokens) and packs shorter ones together.
        self.row_budget = 2 * settings.max_length

    def fit(self, data: Sequence[PreferenceExample], on_step: OnStep = None) -> TrainResult:
        s = self.settings
        if not data:
            raise ValueError("preference training needs at least one preference pair")
        self.pairs = [encode_pair(self.tokenizer, e, s.max_length, s.max_completion_length) for e in data]
        self.targets = torch.tensor([e.target for e in data], dtype=torch.float32)
        lengths = [p.tokens for p in self.pairs]
        self.reference = self._reference() if s.loss.needs_reference and s.reference == "precompute" else None
        sample = sorted(random.Random(s.seed).sample(range(len(self.pairs)), min(s.eval_pairs, len(self.pairs))))
        before = self.evaluate(sample)

        def plan(epoch: int) -> list[list[int]]:
            return plan_batches(lengths, s.batch_size, seed=s.seed, epoch=epoch, bucketing=s.length_bucketing)

        def loss_fn(indices: list[int]):
            policy = self._policy_logps(indices)
            loss, metrics = self._loss(indices, policy)
            # Counted as sequences (each prompt twice), as an unshared trainer would see the same data.
            return loss, metrics, sum(self.pairs[i].tokens for i in indices)

        steps = self.loop.run(plan, loss_fn, on_step)
        after = self.evaluate(sample)
        checked = {k: v for k, v in asdict(after).items() if k != "kl" or s.loss.needs_reference}
        if not all(math.isfinite(v) for v in checked.values()):
            raise FloatingPointError(f"{s.loss} training diverged: {after}")
        metrics = {f"{k}_before": v for k, v in asdict(before).items()}
        metrics |= {f"{k}_after": v for k, v in asdict(after).items()}
        metrics |= {"optimizer_steps": float(len(steps)), "tokens_per_s": steps[-1].tokens_per_s if steps else 0.0,
                    "eval_pairs": float(len(sample))}
        return TrainResult(metrics, steps)

    def evaluate(self, indices: Sequence[int] | None = None) -> PreferenceStats:
        """Loss, rewards and KL over `indices` (default: every pair), without gradients.

        With a fresh adapter and precomputed reference log-probs nothing is computed: the policy's log-probs
        are the reference's.
        """
        indices = list(range(len(self.pairs))) if indices is None else list(indices)
        fresh = self.reference is not None and adapter_is_identity(self.model)
        self.model.eval()
        totals: dict[str, float] = {}
        with torch.no_grad(), self.loop.autocast():
            for start in range(0, len(indices), self.settings.batch_size):
                batch = indices[start:start + self.settings.batch_size]
                policy = self._reference_as_policy(batch) if fresh else self._policy_logps(batch)
                loss, metrics = self._loss(batch, policy, policy_is_reference=fresh)
                for key, value in {"loss": loss.item(), **metrics}.items():
                    totals[key] = totals.get(key, 0.0) + value * len(batch) / len(indices)
        return PreferenceStats(**{k: totals[k] for k in PreferenceStats.__dataclass_fields__})

    def _policy_logps(self, indices: list[int]) -> _Logps:
        batch = pack_shared_prefix([self.pairs[i] for i in indices], self.pad_id, self.row_budget)
        return _Logps(*shared_prefix_logps(self.model, batch))

    def _reference_as_policy(self, indices: list[int]) -> _Logps:
        assert self.reference is not None
        lengths = [(len(self.pairs[i].chosen), len(self.pairs[i].rejected)) for i in indices]
        return _Logps(self.reference[0][indices], self.reference[1][indices],
                      torch.tensor([c for c, _ in lengths]), torch.tensor([r for _, r in lengths]))

    def _reference_logps(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is not None:
            return self.reference[0][indices], self.reference[1][indices]
        with self._adapter_disabled(), torch.no_grad():
            ref = self._policy_logps(indices)
        return ref.chosen, ref.rejected

    def _reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs for every pair, once: read from the run's cache where a pair was scored in an earlier
        trainer run (`reference_cache`), else computed; kept beside the checkpoints too, so a resume skips them."""
        cache = self.checkpoint_dir / "reference_logps.safetensors" if self.checkpoint_dir else None
        if cache is not None and cache.is_file():
            saved = load_file(cache)
            if saved["chosen"].shape[0] == len(self.pairs):
                return saved["chosen"], saved["rejected"]
        known = self.reference_cache.get(self.pairs) if self.reference_cache is not None else {}
        chosen, rejected = torch.zeros(len(self.pairs)), torch.zeros(len(self.pairs))
        for index, (c, r) in known.items():
            chosen[index], rejected[index] = c, r
        missing = [i for i in range(len(self.pairs)) if i not in known]
        self.model.eval()
        with self._adapter_disabled(), torch.no_grad(), self.loop.autocast():
            for start in range(0, len(missing), self.settings.batch_size):
                batch = missing[start:start + self.settings.batch_size]
                ref = self._policy_logps(batch)
                chosen[batch], rejected[batch] = ref.chosen.float().cpu(), ref.rejected.float().cpu()
        self.reference_scored = len(missing)
        if self.loop.rank == 0:
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                save_file({"chosen": chosen, "rejected": rejected}, cache)
            if self.reference_cache is not None:
                self.reference_cache.put(self.pairs, {i: (chosen[i].item(), rejected[i].item()) for i in missing})
        return chosen, rejected

    def _adapter_disabled(self):
        target = self.loop.engine.module if self.loop.engine is not None else self.model
        return target.disable_adapter() if hasattr(target, "disable_adapter") else contextlib.nullcontext()

    def _loss(self, indices: list[int], policy: _Logps,
              policy_is_reference: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the micro-batch and its logged metrics, for the configured objective."""
        device = policy.chosen.device
        ref_chosen = ref_rejected = None
        if self.settings.loss.needs_reference:
            ref_chosen, ref_rejected = (t.to(device) for t in self._reference_logps(indices))
        kl_point = None
        if self.objective.needs_kl_ref_point:
            kl_point = torch.zeros((), device=device) if policy_is_reference else self._kl_ref_point(indices)
        batch = PairBatch(policy.chosen, policy.rejected, policy.chosen_len.to(device), policy.rejected_len.to(device),
                          self.targets[indices].to(device), ref_chosen, ref_rejected, kl_point)
        per_pair, chosen_r, rejected_r = self.objective.compute(batch, self.settings)
        nll = losses.chosen_nll(batch.policy_chosen, batch.chosen_lengths)
        if self.settings.nll_weight:
            per_pair = per_pair + self.settings.nll_weight * nll
        margin = chosen_r - rejected_r
        kl = (policy.chosen - ref_chosen).detach().mean().item() if ref_chosen is not None else float("nan")
        metrics = {
            "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item(),
            "chosen_reward": chosen_r.mean().item(), "rejected_reward": rejected_r.mean().item(),
            "chosen_logps": policy.chosen.detach().mean().item(),
            "rejected_logps": policy.rejected.detach().mean().item(), "kl": kl,
            "chosen_nll": nll.detach().mean().item(),
        }
        return per_pair.mean(), metrics

    def _kl_ref_point(self, indices: list[int]) -> torch.Tensor:
        """KTO's reference point: KL(policy || reference) estimated from mismatched prompt/completion pairs within
        the batch, without gradients (Ethayarajh et al. 2024, sec. 4.1)."""
        pairs: list[EncodedPair] = [self.pairs[i] for i in indices]
        batch = collate_sequences([p.prompt for p in pairs],
                                  [pairs[(k + 1) % len(pairs)].chosen for k in range(len(pairs))], self.pad_id)
        with torch.no_grad():
            policy_kl, _ = sequence_logps(self.model, batch)
            with self._adapter_disabled():
                ref_kl, _ = sequence_logps(self.model, batch)
        return (policy_kl - ref_kl).mean()


@register_trainer("preference", parse=parse_pair)
def build_preference_trainer(ctx: BuildContext) -> PreferenceTrainer:
    spec = ctx.spec
    cache = (ReferenceCache(spec.reference_cache, spec.model_dir, spec.dtype, spec.device, ctx.settings.precision)
             if spec.reference_cache is not None else None)
    return PreferenceTrainer(ctx.lm, ctx.tokenizer, ctx.settings, reference_cache=cache, **ctx.loop_options)
