"""Preference-learning and RL losses for policy training.

Every function here is a pure function of tensors: no modules, no model access, no optimiser state
(the KL controllers hold one float). Trainers compute the log-probabilities and pass them in.

Conventions shared by the preference losses:

* ``*_logps`` are *sequence* log-probabilities of shape ``(batch,)``: the sum over completion tokens of
  ``log pi(y_t | x, y_<t)``, prompt and padding excluded. Where a paper uses length-averaged
  log-probabilities (SimPO, ORPO) the function takes the summed values plus the lengths and averages
  itself, so callers always pass the same kind of number.
* ``h`` denotes the DPO log-ratio margin
  ``(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``.
* Losses are returned per example (no reduction) so that callers can weight or mask pairs; rewards are
  returned detached, for logging only.
"""

from policies.training.losses.grpo import group_advantages, grpo_policy_loss
from policies.training.losses.preference import (
    chosen_nll,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    soft_dpo_loss,
)
from policies.training.losses.rl import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    gae,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
)
from policies.training.losses.shared import masked_mean, whiten
from policies.training.settings import LossType

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "LossType",
    "bradley_terry_loss",
    "chosen_nll",
    "dpo_loss",
    "gae",
    "group_advantages",
    "grpo_policy_loss",
    "hinge_loss",
    "ipo_loss",
    "kl_penalty",
    "kto_loss",
    "masked_mean",
    "orpo_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "robust_dpo_loss",
    "simpo_loss",
    "soft_dpo_loss",
    "whiten",
]
