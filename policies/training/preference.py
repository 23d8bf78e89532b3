"""Preference training on pairs: the DPO family (DPO, cDPO, IPO, robust DPO, hinge), SimPO, ORPO and KTO,
all on a LoRA adapter. The reference is the same model with the adapter disabled."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from policies.training import losses
from policies.training.batching import plan_batches
from policies.training.data import PreferenceExample, collate, collate_sequences, encode_pair, sequence_logps
from policies.training.losses import LossType
from policies.training.optimization import OptimSettings, StepLog, TrainingLoop

DEFAULT_BETA = {LossType.SIMPO: 2.0}


class PreferenceSettings(OptimSettings):
    loss: LossType = LossType.DPO
    beta: float | None = Field(default=None, gt=0)
    """Default 0.1, or 2.0 for SimPO (its rewards are per-token averages)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """cDPO's and robust DPO's assumed label-flip rate."""
    soft_labels: bool = False
    """DPO against the judge's probability per pair (the CAI paper's soft labels) instead of a hard 1."""
    simpo_gamma: float = Field(default=0.5, ge=0)
    kto_desirable_weight: float = Field(default=1.0, gt=0)
    kto_undesirable_weight: float = Field(default=1.0, gt=0)
    reference: Literal["precompute", "online"] = "precompute"
    """precompute: reference log-probs once per dataset (cached beside checkpoints); online: every step."""
    max_length: int = Field(default=512, ge=16)

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.loss, 0.1)


@dataclass(frozen=True)
class PreferenceStats:
    """Dataset means under the current policy."""

    loss: float
    reward_margin: float
    reward_accuracy: float
    chosen_reward: float
    rejected_reward: float
    kl: float
    """Mean log pi/pi_ref over the chosen completions (a k1 estimate of the sequence KL); NaN for the
    reference-free losses, which never compute the reference."""


@dataclass(frozen=True)
class PreferenceResult:
    before: PreferenceStats
    after: PreferenceStats
    steps: list[StepLog]
    tokens_per_s: float

    def metrics(self) -> dict[str, float]:
        flat = {f"{k}_before": v for k, v in asdict(self.before).items()}
        flat |= {f"{k}_after": v for k, v in asdict(self.after).items()}
        return flat | {"optimizer_steps": float(len(self.steps)), "tokens_per_s": self.tokens_per_s}


@dataclass
class _Logps:
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


class PreferenceTrainer:
    def __init__(self, model, tokenizer, settings: PreferenceSettings, *, checkpoint_dir: Path | None = None,
                 engine=None, rank: int = 0, world_size: int = 1):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.checkpoint_dir = checkpoint_dir
        self.loop = TrainingLoop(model, settings, checkpoint_dir, engine, rank, world_size)
        self.pad_id = tokenizer.pad_token_id

    def train(self, examples: Sequence[PreferenceExample],
              on_step: Callable[[StepLog], None] | None = None) -> PreferenceResult:
        s = self.settings
        if not examples:
            raise ValueError("preference training needs at least one preference pair")
        self.pairs = [encode_pair(self.tokenizer, e, s.max_length) for e in examples]
        self.targets = torch.tensor([e.target for e in examples], dtype=torch.float32)
        lengths = [p.tokens for p in self.pairs]
        self.reference = self._reference() if s.loss.needs_reference and s.reference == "precompute" else None
        before = self.evaluate()

        def plan(epoch: int) -> list[list[int]]:
            return plan_batches(lengths, s.batch_size, seed=s.seed, epoch=epoch, bucketing=s.length_bucketing)

        def loss_fn(indices: list[int]):
            loss, metrics = self._loss(indices, self._policy_logps(indices))
            return loss, metrics, sum(self.pairs[i].tokens for i in indices)

        steps = self.loop.run(plan, loss_fn, on_step)
        after = self.evaluate()
        checked = {k: v for k, v in asdict(after).items() if k != "kl" or s.loss.needs_reference}
        if not all(math.isfinite(v) for v in checked.values()):
            raise FloatingPointError(f"{s.loss} training diverged: {after}")
        return PreferenceResult(before, after, steps, steps[-1].tokens_per_s if steps else 0.0)

    def evaluate(self) -> PreferenceStats:
        """Loss, rewards and KL over the whole dataset, without gradients."""
        self.model.eval()
        batches = [list(range(i, min(i + self.settings.batch_size, len(self.pairs))))
                   for i in range(0, len(self.pairs), self.settings.batch_size)]
        totals: dict[str, float] = {}
        with torch.no_grad(), self.loop.autocast():
            for indices in batches:
                loss, metrics = self._loss(indices, self._policy_logps(indices))
                for key, value in {"loss": loss.item(), **metrics}.items():
                    totals[key] = totals.get(key, 0.0) + value * len(indices) / len(self.pairs)
        return PreferenceStats(**{k: totals[k] for k in PreferenceStats.__dataclass_fields__})

    def _policy_logps(self, indices: list[int]) -> _Logps:
        sums, counts = sequence_logps(self.model, collate([self.pairs[i] for i in indices], self.pad_id))
        half = len(indices)
        return _Logps(sums[:half], sums[half:], counts[:half], counts[half:])

    def _reference_logps(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is not None:
            return self.reference[0][indices], self.reference[1][indices]
        with self._adapter_disabled(), torch.no_grad():
            ref = self._policy_logps(indices)
        return ref.chosen, ref.rejected

    def _reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs for every pair, once; cached beside the checkpoints so a resume skips them."""
        cache = self.checkpoint_dir / "reference_logps.safetensors" if self.checkpoint_dir else None
        if cache is not None and cache.is_file():
            saved = load_file(cache)
            if saved["chosen"].shape[0] == len(self.pairs):
                return saved["chosen"], saved["rejected"]
        chosen, rejected = [], []
        self.model.eval()
        with self._adapter_disabled(), torch.no_grad(), self.loop.autocast():
            for start in range(0, len(self.pairs), self.settings.batch_size):
                ref = self._policy_logps(list(range(start, min(start + self.settings.batch_size, len(self.pairs)))))
                chosen.append(ref.chosen.float().cpu())
                rejected.append(ref.rejected.float().cpu())
        result = torch.cat(chosen), torch.cat(rejected)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file({"chosen": result[0], "rejected": result[1]}, cache)
        return result

    def _adapter_disabled(self):
        target = self.loop.engine.module if self.loop.engine is not None else self.model
        return target.disable_adapter() if hasattr(target, "disable_adapter") else contextlib.nullcontext()

    def _loss(self, indices: list[int], policy: _Logps) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the micro-batch and its logged metrics, for the configured loss type."""
        s = self.settings
        beta, kind = s.effective_beta, s.loss
        device = policy.chosen.device
        ref_chosen = ref_rejected = None
        if kind.needs_reference:
            ref_chosen, ref_rejected = (t.to(device) for t in self._reference_logps(indices))
        pair_args = (policy.chosen, policy.rejected, ref_chosen, ref_rejected)
        if kind in (LossType.DPO, LossType.CDPO):
            smoothing = 1.0 - self.targets[indices].to(device) if s.soft_labels else s.label_smoothing
            per_pair, chosen_r, rejected_r = losses.dpo_loss(*pair_args, beta=beta, label_smoothing=smoothing)
        elif kind == LossType.IPO:
            # IPO regresses a per-token margin (as in TRL): average the log-probs over completion length.
            averaged = (policy.chosen / policy.chosen_len, policy.rejected / policy.rejected_len,
                        ref_chosen / policy.chosen_len, ref_rejected / policy.rejected_len)
            per_pair, chosen_r, rejected_r = losses.ipo_loss(*averaged, beta=beta)
        elif kind == LossType.RDPO:
            per_pair, chosen_r, rejected_r = losses.robust_dpo_loss(*pair_args, beta=beta,
                                                                    label_smoothing=s.label_smoothing)
        elif kind == LossType.HINGE:
            per_pair, chosen_r, rejected_r = losses.hinge_loss(*pair_args, beta=beta)
        elif kind == LossType.SIMPO:
            per_pair, chosen_r, rejected_r = losses.simpo_loss(
                policy.chosen, policy.rejected, policy.chosen_len, policy.rejected_len, beta=beta, gamma=s.simpo_gamma)
        elif kind == LossType.ORPO:
            odds, chosen_r, rejected_r = losses.orpo_loss(
                policy.chosen, policy.rejected, policy.chosen_len, policy.rejected_len, beta=beta)
            # ORPO = NLL of the chosen response + lambda * odds-ratio term (Hong et al. 2024, eq. 6).
            per_pair = -policy.chosen / policy.chosen_len + odds
        elif kind == LossType.KTO:
            per_pair, chosen_r, rejected_r = self._kto(indices, policy, ref_chosen, ref_rejected, beta)
        else:  # pragma: no cover - every LossType member is handled above
            raise ValueError(f"unsupported loss {kind}")
        margin = chosen_r - rejected_r
        kl = (policy.chosen - ref_chosen).detach().mean().item() if ref_chosen is not None else float("nan")
        metrics = {
            "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item(),
            "chosen_reward": chosen_r.mean().item(), "rejected_reward": rejected_r.mean().item(),
            "chosen_logps": policy.chosen.detach().mean().item(),
            "rejected_logps": policy.rejected.detach().mean().item(), "kl": kl,
        }
        return per_pair.mean(), metrics

    def _kto(self, indices, policy: _Logps, ref_chosen, ref_rejected, beta):
        """KTO on the pairs split into desirable (chosen) and undesirable (rejected) examples.

        The KL reference point is estimated from mismatched prompt/completion pairs within the batch, without
        gradients (Ethayarajh et al. 2024, sec. 4.1).
        """
        s = self.settings
        batch = collate_sequences([self.pairs[i].prompt for i in indices],
                                  [self.pairs[indices[(k + 1) % len(indices)]].chosen for k in range(len(indices))],
                                  self.pad_id)
        with torch.no_grad():
            policy_kl, _ = sequence_logps(self.model, batch)
            with self._adapter_disabled():
                ref_kl, _ = sequence_logps(self.model, batch)
        half = len(indices)
        kl_point = (policy_kl - ref_kl).mean()
        per_example, rewards = losses.kto_loss(
            torch.cat([policy.chosen, policy.rejected]), torch.cat([ref_chosen, ref_rejected]),
            torch.cat([torch.ones(half, dtype=torch.bool), torch.zeros(half, dtype=torch.bool)]).to(kl_point.device),
            kl_point, beta=beta, desirable_weight=s.kto_desirable_weight,
            undesirable_weight=s.kto_undesirable_weight)
        per_pair = (per_example[:half] + per_example[half:]) / 2
        return per_pair, rewards[:half], rewards[half:]
