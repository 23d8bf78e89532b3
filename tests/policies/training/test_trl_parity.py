"""Our DPO-family losses equal TRL's on identical inputs (TRL is a test-time oracle only).

TRL's DPOTrainer computes its loss inside `_compute_loss`; it is driven here with precomputed reference
log-probs and a stand-in model whose per-token log-probs put each sequence's whole log-prob on one token,
so both implementations see exactly the same sequence log-probs.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

# TRL is in the test extras: without it these tests must fail (an import error), never skip.
import trl.experimental.cpo.cpo_trainer as cpo
import trl.experimental.orpo.orpo_trainer as orpo
import trl.trainer.dpo_trainer as trl_dpo
import trl.trainer.kto_trainer as kto

from policies.training import losses

B = 6


@pytest.fixture
def logps():
    g = torch.Generator().manual_seed(0)
    return tuple(-torch.rand(B, generator=g, dtype=torch.float64) * 20 for _ in range(4))


class OneTokenModel(torch.nn.Module):
    def __init__(self, sequence_logps: torch.Tensor):
        super().__init__()
        self.per_token = torch.zeros(sequence_logps.shape[0], 3, dtype=sequence_logps.dtype)
        self.per_token[:, 0] = sequence_logps

    def forward(self, input_ids, **kwargs):
        zeros = torch.zeros_like(self.per_token)
        return SimpleNamespace(log_probs=self.per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(zeros, dtype=torch.bool))


def trl_loss(loss_type: str, beta: float, label_smoothing: float, pc, pr, rc, rr,
             completion_mask: torch.Tensor | None = None) -> torch.Tensor:
    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    model = OneTokenModel(torch.cat([pc, pr]))
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer.__dict__.update(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * B, 4, dtype=torch.long), "attention_mask": torch.ones(2 * B, 4),
              "completion_mask": torch.ones(2 * B, 4) if completion_mask is None else completion_mask,
              "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return trainer._compute_loss(model, inputs, return_outputs=False)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_equals_trl(logps, beta):
    ours, _, _ = losses.dpo_loss(*logps, beta=beta)
    torch.testing.assert_close(ours.mean(), trl_loss("sigmoid", beta, 0.0, *logps))


def test_robust_dpo_equals_trl(logps):
    ours, _, _ = losses.robust_dpo_loss(*logps, beta=0.1, label_smoothing=0.2)
    torch.testing.assert_close(ours.mean(), trl_loss("robust", 0.1, 0.2, *logps))


def test_hinge_equals_trl(logps):
    ours, _, _ = losses.hinge_loss(*logps, beta=0.1)
    torch.testing.assert_close(ours.mean(), trl_loss("hinge", 0.1, 0.0, *logps))


def test_ipo_with_length_averaging_equals_trl(logps):
    # TRL averages each log-ratio over its completion's token count: lengths 1..4, chosen and rejected differing.
    completion_mask = torch.zeros(2 * B, 4)
    lengths = torch.tensor([1, 2, 3, 4, 2, 3, 4, 1, 3, 2, 1, 4])
    for row, n in enumerate(lengths):
        completion_mask[row, :n] = 1
    ours, _, _ = losses.ipo_loss(*logps, beta=0.3, chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])
    torch.testing.assert_close(ours.mean(), trl_loss("ipo", 0.3, 0.0, *logps, completion_mask=completion_mask))


def test_simpo_equals_trl_cpo_with_simpo_loss(logps):
    policy_chosen, policy_rejected = logps[0], logps[1]
    chosen_len, rejected_len = torch.tensor([3, 5, 2, 7, 4, 6]), torch.tensor([4, 2, 6, 3, 5, 1])
    trainer = cpo.CPOTrainer.__new__(cpo.CPOTrainer)
    trainer.__dict__.update(alpha=0.0, loss_type="simpo", simpo_gamma=0.7, beta=2.5, label_smoothing=0.0,
                            accelerator=SimpleNamespace(device="cpu"))
    # TRL's CPOTrainer passes length-averaged log-probs for simpo; ours averages the summed ones itself.
    theirs, _, _ = trainer.cpo_loss(policy_chosen / chosen_len, policy_rejected / rejected_len)
    ours, _, _ = losses.simpo_loss(policy_chosen, policy_rejected, chosen_len, rejected_len, beta=2.5, gamma=0.7)
    torch.testing.assert_close(ours, theirs)


def test_orpo_equals_trl_orpo_loss(logps):
    # Equal completion lengths within the batch: TRL's NLL is a mean over all chosen tokens of the batch, ours a
    # mean over each pair's tokens, then over pairs; the two agree exactly when the lengths agree.
    length = torch.full((B,), 9)
    chosen, rejected = logps[0] / 4, logps[1] / 4  # mean log-probs in a range where P(y) is not negligible
    trainer = orpo.ORPOTrainer.__new__(orpo.ORPOTrainer)
    trainer.__dict__.update(beta=0.2, aux_loss_enabled=False, accelerator=SimpleNamespace(
        device="cpu", gather_for_metrics=lambda x: x))
    nll = -(chosen * length).sum() / length.sum()
    # TRL's forward hands the odds-ratio term length-averaged log-probs.
    trainer.concatenated_forward = lambda model, batch: (chosen, rejected, torch.zeros(1), torch.zeros(1), nll)
    theirs, _ = trainer.get_batch_loss_metrics(None, {}, train_eval="train")
    ours, _, _ = losses.orpo_loss(chosen * length, rejected * length, length, length, beta=0.2)
    torch.testing.assert_close(ours.mean(), theirs.to(ours.dtype))


def test_kto_equals_trl(logps):
    from policies.training.objectives import OBJECTIVES, PairBatch
    from policies.training.settings import PreferenceSettings

    policy_chosen, policy_rejected, ref_chosen, ref_rejected = logps
    g = torch.Generator().manual_seed(1)
    kl_policy, kl_ref = (-torch.rand(B, generator=g, dtype=torch.float64) * 20 for _ in range(2))
    model = OneTokenModel(torch.cat([policy_chosen, policy_rejected]))
    trainer = kto.KTOTrainer.__new__(kto.KTOTrainer)
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer.__dict__.update(
        model=model, accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=True, calculate_KL=True,
        loss_type="kto", beta=0.3, desirable_weight=1.5, undesirable_weight=0.5,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    trainer._compute_kl_logps = lambda model, batch: kl_policy
    inputs = {"input_ids": torch.zeros(2 * B, 4, dtype=torch.long), "attention_mask": torch.ones(2 * B, 4),
              "completion_mask": torch.ones(2 * B, 4), "label": torch.tensor([True] * B + [False] * B),
              "ref_logps": torch.cat([ref_chosen, ref_rejected]), "ref_KL_logps": kl_ref}
    theirs = trainer._compute_loss(model, inputs, return_outputs=False)

    settings = PreferenceSettings(loss="kto", beta=0.3, kto_desirable_weight=1.5, kto_undesirable_weight=0.5)
    batch = PairBatch(policy_chosen, policy_rejected, torch.ones(B), torch.ones(B), torch.ones(B), ref_chosen,
                      ref_rejected, (kl_policy - kl_ref).mean())
    ours, _, _ = OBJECTIVES["kto"].compute(batch, settings)
    torch.testing.assert_close(ours.mean(), theirs)
