"""The fused LoRA linear layer against the plain formula and against PEFT's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

import policies.training.fused_lora as fused_lora
from policies.training.fused_lora import FusedLoraLinear, use_fused_lora


class TwoLayers(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.proj = torch.nn.Linear(12, 20, bias=bias)
        self.out = torch.nn.Linear(20, 7, bias=bias)

    def forward(self, x):
        return self.out(torch.tanh(self.proj(x)))


def lora_model(bias: bool = True, dropout: float = 0.0, dtype=torch.float32):
    torch.manual_seed(0)
    model = get_peft_model(TwoLayers(bias).to(dtype), LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout,
                                                                  target_modules=["proj", "out"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: a fresh one (B = 0) would hide any error in the update
            torch.nn.init.normal_(parameter)
    return model


def test_values_and_gradients_equal_the_lora_formula_by_hand():
    model = lora_model(dtype=torch.float64)
    use_fused_lora(model)
    layer = model.base_model.model.proj
    weight, bias = layer.base_layer.weight, layer.base_layer.bias
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert layer.scaling["default"] == 3.0  # alpha 12 / r 4
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 20, dtype=torch.float64)

    (layer(x) * upstream).sum().backward()
    ours = x.grad.clone(), a.grad.clone(), b.grad.clone()
    x.grad = a.grad = b.grad = None
    expected = x @ weight.T + bias + 3.0 * (x @ a.T) @ b.T
    (expected * upstream).sum().backward()

    torch.testing.assert_close(layer(x), expected)
    for got, want in zip(ours, (x.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want)
    assert weight.grad is None and bias.grad is None  # the base stays frozen


@pytest.mark.parametrize("bias", [False, True])
def test_a_switched_model_computes_what_peft_computes_and_saves_the_same_adapter(bias):
    peft_model = lora_model(bias, dtype=torch.float64)  # float64: the two orders of summation agree to 1e-7
    fused = copy.deepcopy(peft_model)
    assert use_fused_lora(fused) == 2
    assert all(isinstance(m, LoraLinear) for m in (fused.base_model.model.proj, fused.base_model.model.out))
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    outputs = []
    for model in (peft_model, fused):
        output = model(x)
        output.pow(2).sum().backward()
        outputs.append((output, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0])
    assert outputs[1][1].keys() == outputs[0][1].keys() and len(outputs[0][1]) == 4
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad)
    assert fused.state_dict().keys() == peft_model.state_dict().keys()
    with torch.no_grad():  # the in-place path of evaluation and reference passes
        torch.testing.assert_close(fused(x), peft_model(x))


def test_calls_that_are_not_plain_lora_run_pefts_forward(monkeypatch):
    calls = []
    apply = fused_lora._LoraLinearFunction.apply
    monkeypatch.setattr(fused_lora._LoraLinearFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    x = torch.randn(2, 12)
    model = lora_model()
    use_fused_lora(model)
    model(x)
    assert len(calls) == 2
    inner = model.base_model.model
    with model.disable_adapter():
        torch.testing.assert_close(model(x), inner.out.base_layer(torch.tanh(inner.proj.base_layer(x))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    dropped = lora_model(dropout=0.5)
    use_fused_lora(dropped)
    dropped(x)
    assert len(calls) == 2  # disabled, under autocast, with dropout: none fused


def test_only_pefts_plain_linear_layers_are_switched():
    model = lora_model()
    use_fused_lora(model)
    assert use_fused_lora(model) == 0  # already switched
    assert type(model.base_model.model.proj) is FusedLoraLinear
