"""Our DPO-family losses equal TRL's on identical inputs (TRL is a test-time oracle only).

TRL's DPOTrainer computes its loss inside `_compute_loss`; it is driven here with precomputed reference
log-probs and a stand-in model whose per-token log-probs put each sequence's whole log-prob on one token,
so both implementations see exactly the same sequence log-probs.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from policies.training import losses

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="TRL is installed with the test extras")

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


def trl_loss(loss_type: str, beta: float, label_smoothing: float, pc, pr, rc, rr) -> torch.Tensor:
    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    model = OneTokenModel(torch.cat([pc, pr]))
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer.__dict__.update(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * B, 4, dtype=torch.long), "attention_mask": torch.ones(2 * B, 4),
              "completion_mask": torch.ones(2 * B, 4), "ref_chosen_logps": rc, "ref_rejected_logps": rr}
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
