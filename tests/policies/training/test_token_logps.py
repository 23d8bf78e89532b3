"""The fused projection + log-softmax against autograd through the plain formula."""

import pytest
import torch

import policies.training.token_logps as token_logps
from policies.training.token_logps import projected_logps


def plain(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(head(hidden).float(), -1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_plain_log_softmax_across_partial_chunks(monkeypatch, bias):
    monkeypatch.setattr(token_logps, "LOGIT_CHUNK", 4)  # 11 rows: chunks of 4, 4 and 3
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 37, bias=bias)
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 37, (11,))
    upstream = torch.randn(11)  # a non-uniform upstream gradient, as a DPO loss gives

    ours = projected_logps(head, hidden, targets)
    (ours * upstream).sum().backward()
    ours_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.zero_grad()

    expected = plain(head, hidden, targets)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_grads[0], hidden.grad)
    torch.testing.assert_close(ours_grads[1], head.weight.grad)


def test_a_frozen_head_gets_no_gradient_and_no_grad_mode_stores_nothing():
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 19, bias=False).requires_grad_(False)
    hidden = torch.randn(5, 6, requires_grad=True)
    targets = torch.randint(0, 19, (5,))
    projected_logps(head, hidden, targets).sum().backward()
    assert head.weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        assert not projected_logps(head, hidden, targets).requires_grad


def test_under_bf16_autocast_the_logits_are_computed_in_bf16_and_returned_in_float32():
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 29, bias=False)
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 29, (9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = projected_logps(head, hidden, targets)
        expected = plain(head, hidden, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=0.05, rtol=0.02)
    ours.sum().backward()
    assert hidden.grad.dtype == hidden.dtype and torch.isfinite(hidden.grad).all()
