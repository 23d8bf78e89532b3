"""Tests for policies.training.losses.grpo (group advantages and the GRPO-family policy loss).

As in test_losses.py, expected values are worked out by hand with the ``math`` module from small concrete
numbers, never by re-running the torch formula under test. Tensors are float64 so the comparisons can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from policies.training.losses import group_advantages, grpo_policy_loss

REL = 1e-9
EPS = 1e-4  # group_advantages' default


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def approx(values: float | list[float]) -> object:
    return pytest.approx(values, rel=REL, abs=1e-12)


def k3(d: float) -> float:
    """k3 of a token whose log-ratio ``ref - logp`` is ``d``."""
    return math.exp(d) - d - 1


# ----------------------------------------------------------------------------------------------------------
# group_advantages: two groups of three; the second has no spread
# ----------------------------------------------------------------------------------------------------------

REWARDS = (1.0, 2.0, 4.0, 0.5, 0.5, 0.5)
# Group 0: mean 7/3, deviations -4/3, -1/3, 5/3; sample variance (16 + 1 + 25) / 9 / (3 - 1) = 7/3.
GROUP0_DEV = (-4 / 3, -1 / 3, 5 / 3)
GROUP0_STD = math.sqrt(7 / 3)
# Whole batch: mean 8.5 / 6 = 17/12, deviations -5/12, 7/12, 31/12 and three times -11/12;
# sample variance (25 + 49 + 961 + 3 * 121) / 144 / (6 - 1) = 1398 / 720.
BATCH_STD = math.sqrt(1398 / 720)


@pytest.mark.parametrize(
    ("scale", "eps", "denominator"),
    [
        ("group", EPS, GROUP0_STD + EPS),
        ("group", 0.0, GROUP0_STD),
        ("batch", EPS, BATCH_STD + EPS),
        ("none", EPS, 1.0),
    ],
)
def test_group_advantages_each_scale(scale, eps, denominator):
    advantages, zero_spread = group_advantages(t(*REWARDS), 3, scale=scale, eps=eps)
    assert advantages.dtype == torch.float64
    assert advantages.tolist() == approx([d / denominator for d in GROUP0_DEV] + [0.0, 0.0, 0.0])
    assert zero_spread.tolist() == [False, True]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_spread_group_is_exactly_zero(scale):
    # 0.1 is not a binary fraction, so the group mean need not round back to 0.1: the zeros are enforced.
    advantages, zero_spread = group_advantages(t(0.1, 0.1, 0.1, 0.0, 1.0, 0.3), 3, scale=scale)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert (advantages[3:] != 0).all()
    assert zero_spread.tolist() == [True, False]


def test_group_of_one_has_no_spread():
    advantages, zero_spread = group_advantages(t(1.0, 3.0), 1)
    assert advantages.tolist() == [0.0, 0.0]
    assert zero_spread.tolist() == [True, True]


def test_group_advantages_are_constants():
    rewards = t(1.0, 2.0, 3.0, 5.0).requires_grad_()
    advantages, _ = group_advantages(rewards, 2)
    assert not advantages.requires_grad


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale"),
    [
        (t(1.0, 2.0, 3.0, 4.0, 5.0), 2, "group"),  # 5 rewards do not split into pairs
        (t(1.0, 2.0), 0, "group"),
        (t(1.0, 2.0), 2, "whiten"),
        (t(), 1, "group"),
        (torch.ones(2, 2, dtype=torch.float64), 2, "group"),
        (t(1.0, math.nan), 2, "group"),
    ],
)
def test_group_advantages_rejects_bad_input(rewards, group_size, scale):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size, scale=scale)


# ----------------------------------------------------------------------------------------------------------
# grpo_policy_loss: four completions (two groups of two) of lengths 3, 1, 2, 3, padded to 4 positions
# ----------------------------------------------------------------------------------------------------------

ADVANTAGES = (2.0, -1.0, 0.5, -0.5)
LENGTHS = (3, 1, 2, 3)
N_TOKENS = 9
MAX_LEN = 5
# The probability ratio pi / pi_old of each completion token.
RATIOS = ((1.5, 1.0, 0.9), (0.5,), (0.5, 1.3), (1.5, 0.7, 1.0))
CLIP_LOW, CLIP_HIGH = 0.2, 0.28  # ratios are clipped to [0.8, 1.28]
# -min(r * A, clip(r) * A) per token, by hand:
TOKEN_LOSSES = (
    (-1.28 * 2.0, -1.0 * 2.0, -0.9 * 2.0),  # A > 0, 1.5 clipped to 1.28 (high); 1.0 and 0.9 inside
    (0.8 * 1.0,),  # A < 0, 0.5 clipped to 0.8 (low)
    (-0.5 * 0.5, -1.28 * 0.5),  # A > 0: 0.5 stays (the clipped 0.8 would be the smaller loss); 1.3 -> 1.28 (high)
    (1.5 * 0.5, 0.8 * 0.5, 1.0 * 0.5),  # A < 0: 1.5 stays (likewise); 0.7 -> 0.8 (low); 1.0 inside
)
CLIPPED_LOW, CLIPPED_HIGH = 2, 2  # tokens counted by the clip fractions


def batch(ratios=RATIOS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logprobs, old_logprobs, mask)``, (4, 4); padding carries junk that the mask must hide."""
    logprobs = torch.full((4, 4), 5.0, dtype=torch.float64)
    old = torch.full((4, 4), -3.0, dtype=torch.float64)
    mask = torch.zeros(4, 4, dtype=torch.float64)
    for i, row in enumerate(ratios):
        for j, r in enumerate(row):
            logprobs[i, j], old[i, j], mask[i, j] = -1.0 + math.log(r), -1.0, 1.0
    return logprobs.requires_grad_(), old, mask


def aggregate(token_losses, aggregation: str, num_tokens: float | None = None) -> float:
    """The four aggregations, written out on plain nested lists."""
    total = math.fsum(x for row in token_losses for x in row)
    if aggregation == "grpo":
        return math.fsum(math.fsum(row) / len(row) for row in token_losses) / len(token_losses)
    if aggregation == "dr_grpo":
        return total / (len(token_losses) * MAX_LEN)
    if aggregation == "dapo" and num_tokens is not None:
        return total / num_tokens
    return total / N_TOKENS


AGGREGATIONS = [("grpo", None), ("dr_grpo", None), ("bnpo", None), ("dapo", 12.0), ("dapo", None)]


def loss_of(logprobs, old, mask, aggregation="grpo", num_tokens=None, **kwargs):
    return grpo_policy_loss(
        logprobs, old, t(*ADVANTAGES), mask, aggregation=aggregation, max_completion_length=MAX_LEN,
        num_tokens=num_tokens, **kwargs,
    )


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("aggregation", "num_tokens"), AGGREGATIONS)
def test_on_policy_loss_is_minus_the_weighted_mean_advantage(level, aggregation, num_tokens):
    logprobs, _, mask = batch()
    loss, metrics = loss_of(logprobs, logprobs.detach(), mask, aggregation, num_tokens, level=level)
    # Every ratio is 1, so each token's loss is -A of its completion.
    # grpo: -(2 - 1 + 0.5 - 0.5) / 4; the others: -(2 * 3 - 1 * 1 + 0.5 * 2 - 0.5 * 3) = -4.5 over their count.
    expected = {"grpo": -0.25, "dr_grpo": -4.5 / (4 * MAX_LEN), "bnpo": -4.5 / 9, "dapo": -4.5 / (num_tokens or 9)}
    assert loss.item() == approx(expected[aggregation])
    assert [metrics[k].item() for k in ("clip_fraction_low", "clip_fraction_high", "clip_fraction", "kl")] == [0] * 4


@pytest.mark.parametrize(("aggregation", "num_tokens"), AGGREGATIONS)
def test_clipped_token_level_loss(aggregation, num_tokens):
    logprobs, old, mask = batch()
    loss, metrics = loss_of(logprobs, old, mask, aggregation, num_tokens, clip_low=CLIP_LOW, clip_high=CLIP_HIGH)
    assert loss.item() == approx(aggregate(TOKEN_LOSSES, aggregation, num_tokens))
    assert metrics["clip_fraction_low"].item() == approx(CLIPPED_LOW / N_TOKENS)
    assert metrics["clip_fraction_high"].item() == approx(CLIPPED_HIGH / N_TOKENS)
    assert metrics["clip_fraction"].item() == approx((CLIPPED_LOW + CLIPPED_HIGH) / N_TOKENS)
    assert all(not m.requires_grad for m in metrics.values())


def test_symmetric_clip_moves_the_high_bound():
    logprobs, old, mask = batch()
    loss, metrics = loss_of(logprobs, old, mask, "bnpo")  # clip to [0.8, 1.2]: 1.5 -> 1.2 and 1.3 -> 1.2
    expected = list(map(list, TOKEN_LOSSES))
    expected[0][0], expected[2][1] = -1.2 * 2.0, -1.2 * 0.5
    assert loss.item() == approx(aggregate(expected, "bnpo"))
    assert metrics["clip_fraction_high"].item() == approx(2 / N_TOKENS)


def test_sequence_level_ratio_gspo():
    logprobs, old, mask = batch()
    loss, metrics = loss_of(logprobs, old, mask, "grpo", clip_low=CLIP_LOW, clip_high=CLIP_HIGH, level="sequence")
    # One ratio per completion, the geometric mean of its token ratios.
    s0 = (1.5 * 1.0 * 0.9) ** (1 / 3)  # 1.105, inside [0.8, 1.28]
    s2 = (0.5 * 1.3) ** (1 / 2)  # 0.806, inside
    s3 = (1.5 * 0.7 * 1.0) ** (1 / 3)  # 1.016, inside
    # Completion 1 (ratio 0.5, A = -1) is clipped to 0.8: a constant 0.8 per token, no gradient.
    per_sequence = (-2.0 * s0, 0.8, -0.5 * s2, 0.5 * s3)
    assert loss.item() == approx(math.fsum(per_sequence) / 4)
    assert metrics["clip_fraction_low"].item() == approx(1 / N_TOKENS)
    assert metrics["clip_fraction_high"].item() == 0.0
    loss.backward()
    # d s_i / d logp_it = s_i / |y_i|: every token of a completion gets the same share, padding none.
    expected = [
        [-2.0 * s0 / 3 / 4] * 3 + [0.0],
        [0.0] * 4,
        [-0.5 * s2 / 2 / 4] * 2 + [0.0] * 2,
        [0.5 * s3 / 3 / 4] * 3 + [0.0],
    ]
    for row, got in zip(expected, logprobs.grad.tolist(), strict=True):
        assert got == approx(row)


def test_sequence_ratio_clipped_high():
    logprobs, old, mask = batch(((1.5, 1.5, 1.5), (0.5,), (0.5, 1.3), (1.5, 0.7, 1.0)))
    loss, metrics = loss_of(logprobs, old, mask, "bnpo", clip_low=CLIP_LOW, clip_high=CLIP_HIGH, level="sequence")
    s2, s3 = (0.5 * 1.3) ** (1 / 2), (1.5 * 0.7) ** (1 / 3)
    # Completion 0: geometric mean 1.5 -> 1.28 with A = 2; its three tokens are the high-clipped ones.
    expected = (-1.28 * 2.0 * 3 + 0.8 * 1 - 0.5 * s2 * 2 + 0.5 * s3 * 3) / N_TOKENS
    assert loss.item() == approx(expected)
    assert metrics["clip_fraction_high"].item() == approx(3 / N_TOKENS)
    assert metrics["clip_fraction_low"].item() == approx(1 / N_TOKENS)


# ref - logp on each completion token.
REF_GAPS = ((0.1, -0.2, 0.3), (0.5,), (-0.4, 0.0), (0.2, 0.2, -0.1))


def reference(logprobs: torch.Tensor) -> torch.Tensor:
    ref = torch.full((4, 4), 3.0, dtype=torch.float64)  # junk on padding
    for i, row in enumerate(REF_GAPS):
        for j, d in enumerate(row):
            ref[i, j] = logprobs[i, j].item() + d
    return ref


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo"])
def test_k3_kl_term(aggregation):
    logprobs, _, mask = batch()
    beta = 0.1
    loss, metrics = loss_of(logprobs, logprobs.detach(), mask, aggregation, ref_logprobs=reference(logprobs), beta=beta)
    token_losses = [[-a + beta * k3(d) for d in row] for a, row in zip(ADVANTAGES, REF_GAPS, strict=True)]
    assert loss.item() == approx(aggregate(token_losses, aggregation))
    assert metrics["kl"].item() == approx(math.fsum(k3(d) for row in REF_GAPS for d in row) / N_TOKENS)
    if aggregation == "bnpo":
        loss.backward()
        # d/dlogp of (-A * exp(logp - old) + beta * k3) at ratio 1 is -A + beta * (1 - exp(ref - logp)).
        for i, (a, gaps) in enumerate(zip(ADVANTAGES, REF_GAPS, strict=True)):
            expected = [(-a + beta * (1 - math.exp(d))) / N_TOKENS for d in gaps]
            assert logprobs.grad[i].tolist() == approx(expected + [0.0] * (4 - len(gaps)))


def test_kl_is_reported_without_beta():
    logprobs, _, mask = batch()
    loss, metrics = loss_of(logprobs, logprobs.detach(), mask, "bnpo", ref_logprobs=reference(logprobs))
    assert loss.item() == approx(-4.5 / 9)
    assert metrics["kl"].item() == approx(math.fsum(k3(d) for row in REF_GAPS for d in row) / N_TOKENS)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("aggregation", "num_tokens"), AGGREGATIONS)
def test_zero_spread_group_gets_no_gradient(level, aggregation, num_tokens):
    advantages, zero_spread = group_advantages(t(1.0, 0.0, 0.7, 0.7), 2)
    assert zero_spread.tolist() == [False, True]
    logprobs, old, mask = batch()
    loss, metrics = grpo_policy_loss(
        logprobs, old, advantages, mask, level=level, aggregation=aggregation, max_completion_length=MAX_LEN,
        num_tokens=num_tokens,
    )
    loss.backward()
    assert (logprobs.grad[2:] == 0).all()
    assert (logprobs.grad[:2] != 0).any()
    # Ratios 0.5 and 0.7 of the zero-advantage rows are outside [0.8, 1.2] but clip nothing, so only
    # completion 1 (A < 0, ratio 0.5) counts low and, per token only, completion 0's 1.5 (A > 0) counts high.
    assert metrics["clip_fraction_low"].item() == approx(1 / N_TOKENS)
    assert metrics["clip_fraction_high"].item() == approx(1 / N_TOKENS if level == "token" else 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 0.1},  # KL term without a reference
        {"beta": -0.1, "ref_logprobs": torch.zeros(4, 4, dtype=torch.float64)},
        {"aggregation": "dr_grpo"},  # no max_completion_length
        {"aggregation": "dr_grpo", "max_completion_length": 0},
        {"aggregation": "mean"},
        {"level": "segment"},
        {"aggregation": "dapo", "num_tokens": 0},
        {"ref_logprobs": torch.zeros(4, 3, dtype=torch.float64)},
        {"old_logprobs": torch.zeros(4, 3, dtype=torch.float64)},
        {"advantages": torch.zeros(4, 1, dtype=torch.float64)},
        {"advantages": torch.zeros(3, dtype=torch.float64)},
    ],
)
def test_grpo_policy_loss_rejects_bad_input(kwargs):
    logprobs, old, mask = batch()
    inputs = {"old_logprobs": old, "advantages": t(*ADVANTAGES)}
    inputs.update({k: kwargs.pop(k) for k in ("old_logprobs", "advantages") if k in kwargs})
    with pytest.raises(ValueError):
        grpo_policy_loss(logprobs, inputs["old_logprobs"], inputs["advantages"], mask, **kwargs)


def test_one_dimensional_logprobs_are_rejected():
    with pytest.raises(ValueError):
        grpo_policy_loss(t(-1.0), t(-1.0), t(1.0), t(1.0))
