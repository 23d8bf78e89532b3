"""Every trainer's settings and the names of the preference losses: pydantic only, no torch.

A run config embeds these (`loop.config`), so validating one, or a trainer spec, must not load torch; the
trainer modules import their settings from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Checkpointing = Literal["off", "full", "selective"]
"""What gradient checkpointing keeps for the backward pass (see `recompute`)."""


class LossType(StrEnum):
    """Preference-optimisation objectives implemented in `policies.training.losses`."""

    DPO = "dpo"
    CDPO = "cdpo"  # conservative DPO: DPO with label smoothing
    IPO = "ipo"
    RDPO = "rdpo"  # robust DPO (Chowdhury et al. 2024), not the length-regularised "R-DPO"
    HINGE = "hinge"
    SIMPO = "simpo"
    ORPO = "orpo"
    KTO = "kto"

    @property
    def needs_reference(self) -> bool:
        """Whether the loss needs log-probabilities from a frozen reference model."""
        return self not in (LossType.SIMPO, LossType.ORPO)

    @property
    def paired(self) -> bool:
        """Whether examples are (chosen, rejected) pairs; KTO uses unpaired good/bad labels."""
        return self is not LossType.KTO


@dataclass(frozen=True)
class LossSettingsUse:
    """What a preference loss reads of `PreferenceSettings`, so a setting it ignores can be refused."""

    reads: frozenset[str] = frozenset()
    """PreferenceSettings fields the loss reads besides beta (the reference mode matters exactly when
    `LossType.needs_reference`)."""
    default_beta: float = 0.1


_NLL = frozenset({"nll_weight"})
"""ORPO has its own NLL term; every other loss may add RPO's."""

LOSS_SETTINGS: dict[LossType, LossSettingsUse] = {
    LossType.DPO: LossSettingsUse(_NLL | {"soft_labels"}),
    LossType.CDPO: LossSettingsUse(_NLL | {"label_smoothing"}),
    LossType.IPO: LossSettingsUse(_NLL),
    LossType.RDPO: LossSettingsUse(_NLL | {"label_smoothing"}),
    LossType.HINGE: LossSettingsUse(_NLL),
    LossType.SIMPO: LossSettingsUse(_NLL | {"simpo_gamma"}, default_beta=2.0),
    LossType.ORPO: LossSettingsUse(),
    LossType.KTO: LossSettingsUse(_NLL | {"kto_desirable_weight", "kto_undesirable_weight"}),
}

LOSS_SPECIFIC_SETTINGS = frozenset().union(*(u.reads for u in LOSS_SETTINGS.values()))
"""Settings that only some losses read."""


class OptimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=5e-4, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """SGD keeps no optimizer state: the leanest choice when memory is what limits training."""
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    gradient_checkpointing: Checkpointing = "off"
    """Activation memory against compute (see `recompute`): `full` recomputes each layer in the backward pass
    (least memory); `selective` keeps its projections' and attention's outputs and recomputes the cheap rest
    (about the speed of off for half its extra memory). true/false mean full/off."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast where the device supports it (CUDA with bf16), else fp32."""
    seed: int = 0
    """Set by the loop from the run's `seed` (never in a run config): data order, adapter init, dropout."""
    checkpoint_every: int = Field(default=0, ge=0)
    """Steps between resumable checkpoints (optimizer steps; PPO: rollout steps); 0 keeps none."""

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _boolean_checkpointing(cls, value: Any) -> Any:
        return {True: "full", False: "off"}[value] if isinstance(value, bool) else value


class EpochSettings(OptimSettings):
    """Settings of the trainers that pass over a fixed dataset in epochs (all but PPO)."""

    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    length_bucketing: bool = True


class PreferenceSettings(EpochSettings):
    loss: LossType = LossType.DPO
    beta: float | None = Field(default=None, gt=0)
    """Default 0.1, or 2.0 for SimPO (its rewards are per-token averages)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """cDPO's and robust DPO's assumed label-flip rate (required > 0 for them, rejected for other losses)."""
    soft_labels: bool = False
    """dpo only: train against the judge's probability per pair (the CAI paper's soft labels) instead of 1."""
    nll_weight: float = Field(default=0.0, ge=0)
    """RPO: add this times the chosen answer's per-token NLL to each pair's loss (TRL's `rpo_alpha`; 1.0 in
    the RPO paper), so the chosen side's probability rises instead of only the rejected side's falling."""
    simpo_gamma: float = Field(default=0.5, ge=0)
    kto_desirable_weight: float = Field(default=1.0, gt=0)
    kto_undesirable_weight: float = Field(default=1.0, gt=0)
    reference: Literal["precompute", "online"] = "precompute"
    """precompute: reference log-probs once per dataset (cached beside checkpoints); online: every step.
    Rejected for the reference-free losses (simpo, orpo)."""
    max_length: int = Field(default=512, ge=16)
    max_completion_length: int | None = Field(default=None, ge=1)
    """Score only each answer's first this many tokens (TRL's `max_completion_length`): the preference then
    bears on how answers open, where a refusal is decided, instead of spreading over long continuations."""
    eval_pairs: int = Field(default=16, ge=1)
    """The before/after evaluation runs on at most this many pairs (a fixed sample of the data); the one
    before training is skipped when the adapter is fresh, since the policy then equals the reference."""

    @property
    def effective_beta(self) -> float:
        return self.beta if self.beta is not None else LOSS_SETTINGS[self.loss].default_beta

    @model_validator(mode="after")
    def _every_setting_acts(self) -> PreferenceSettings:
        reads = LOSS_SETTINGS[self.loss].reads
        for name in sorted(LOSS_SPECIFIC_SETTINGS - reads):
            if getattr(self, name) != type(self).model_fields[name].default:
                users = sorted(str(k) for k, u in LOSS_SETTINGS.items() if name in u.reads)
                raise ValueError(f"{name} is only used by the {'/'.join(users)} loss, not by {self.loss}")
        if "label_smoothing" in reads and self.label_smoothing == 0:
            raise ValueError(f"{self.loss} needs label_smoothing > 0 (with 0 it is plain dpo)")
        if not self.loss.needs_reference and self.reference != "precompute":
            raise ValueError(f"{self.loss} is reference-free: `reference` does not apply")
        return self


class SFTSettings(EpochSettings):
    max_length: int = Field(default=512, ge=16)
    max_completion_length: int | None = Field(default=None, ge=1)
    """Train on only each response's first this many tokens (as `PreferenceSettings.max_completion_length`)."""


class RewardModelSettings(EpochSettings):
    max_length: int = Field(default=512, ge=16)
    eval_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Share of pairs held out for evaluation (at least one pair when there are two or more)."""
    margin_from_labels: bool = False
    """Use the judge's confidence as the Bradley-Terry margin: logit(target)."""
    calibration_bins: int = Field(default=10, ge=2)


class PPOSettings(OptimSettings):
    """PPO's own settings plus the optimizer's; no epochs or step limits (`rollouts` and `ppo_epochs` say how
    long it trains). `checkpoint_every` counts rollout steps."""

    rollouts: int = Field(default=4, ge=1)
    """PPO steps: each is one rollout batch followed by `ppo_epochs` of updates."""
    rollout_batch_size: int = Field(default=8, ge=1)
    ppo_epochs: int = Field(default=2, ge=1)
    max_new_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_length: int = Field(default=512, ge=16)
    clip_range: float = Field(default=0.2, gt=0)
    clip_range_value: float = Field(default=0.2, gt=0)
    value_coef: float = Field(default=0.1, ge=0)
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    kl_coef: float = Field(default=0.05, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = Field(default=6.0, gt=0)
    """adaptive_kl only."""
    kl_horizon: int = Field(default=10000, ge=1)
    """adaptive_kl only."""
    whiten_advantages: bool = True

    @model_validator(mode="after")
    def _adaptive_kl_settings_need_adaptive_kl(self) -> PPOSettings:
        for name in ("kl_target", "kl_horizon"):
            if not self.adaptive_kl and getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"{name} is only used with adaptive_kl: true")
        return self


class GRPOSettings(OptimSettings):
    """GRPO's own settings plus the optimizer's (DeepSeekMath's critic-free PPO, with the DAPO and Dr. GRPO
    variants of `losses.grpo`): `steps` rollout steps, each `prompts_per_step` prompts times `group_size`
    completions, then `inner_epochs` passes over those completions in micro-batches of `batch_size`, `grad_accum`
    of them per optimizer step. `checkpoint_every` counts rollout steps. The defaults are TRL's `GRPOConfig`
    (trl 1.16) where it has one, except where a field says otherwise."""

    steps: int = Field(default=4, ge=1)
    """Rollout steps: each samples, scores and trains on one batch of groups."""
    prompts_per_step: int = Field(default=4, ge=1)
    """Prompts per rollout step, taken in a seeded order and cycled."""
    group_size: int = Field(default=4, ge=2)
    """G, completions sampled per prompt and compared with each other (TRL's `num_generations`, 8 there)."""
    inner_epochs: int = Field(default=1, ge=1)
    """Passes over a step's completions (TRL's `num_iterations`, DeepSeekMath's mu); the old log-probs are taken
    before the step's first update, so the ratio (and its clip) acts on every pass after the first window."""
    max_new_tokens: int = Field(default=64, ge=1)
    """The completion limit (TRL's `max_completion_length`, 512 there). A limit that cuts almost every completion
    leaves it unfinished: zero reward, no spread in its group, nothing to learn (and with `overlong: mask`, no
    loss weight either); watch `truncated`."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the rollouts: the group needs varied completions to compare."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling of the rollouts (1: the whole distribution, which the ratio's log-probs are of)."""
    max_length: int = Field(default=512, ge=16)
    """Prompt plus completion tokens; the prompt loses its oldest tokens first."""
    scale: Literal["group", "batch", "none"] = "group"
    """The advantage's denominator: the group's reward std, the whole step's, or none (Dr. GRPO)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """How per-token losses are reduced (`losses.grpo_policy_loss`). dapo, TRL's default: an optimizer step's
    summed token losses over its share of the rollout step's tokens, so every token weighs alike whatever its
    completion's length or micro-batch; bnpo normalises by each micro-batch's own tokens instead."""
    importance_level: Literal["token", "sequence"] = "token"
    """token: PPO's per-token ratio; sequence: GSPO's length-normalised sequence ratio (wants far smaller clips)."""
    clip_low: float = Field(default=0.2, gt=0, lt=1)
    clip_high: float = Field(default=0.28, gt=0)
    """DAPO's clip-higher (TRL's default is `clip_low`): more room for unlikely tokens to rise."""
    beta: float = Field(default=0.04, ge=0)
    """The k3 KL to the reference (the model with the adapter disabled) added to the loss. TRL's default is 0;
    at this scale (a LoRA policy, a few steps, rule rewards a small model can game) a leash is kept by default."""
    overlong: Literal["mask", "penalty", "none"] = "mask"
    """Completions cut at `max_new_tokens` without an end-of-sequence token. mask: zero loss weight (DAPO's
    overlong filtering, TRL's `mask_truncated_completions`, off there); penalty: their reward is lowered by
    `overlong_penalty` (a flat cut, not DAPO's ramp); none: trained as they are."""
    overlong_penalty: float = Field(default=1.0, ge=0)
    """overlong: penalty only."""

    @model_validator(mode="after")
    def _penalty_needs_penalty(self) -> GRPOSettings:
        if self.overlong != "penalty" and self.overlong_penalty != type(self).model_fields["overlong_penalty"].default:
            raise ValueError("overlong_penalty is only used with overlong: penalty")
        return self
