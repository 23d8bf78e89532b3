"""Scalar heads on a causal LM's last hidden state: the reward model's score and PPO's value."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HEAD_FILE = "head.safetensors"


class ScalarHead(torch.nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)

    def save(self, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / HEAD_FILE)

    @classmethod
    def load(cls, directory: Path, hidden_size: int) -> ScalarHead:
        head = cls(hidden_size)
        head.load_state_dict(load_file(directory / HEAD_FILE))
        return head


def last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(model outputs, final-layer hidden states (N, L, H)) from one forward pass of a causal LM."""
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return outputs, outputs.hidden_states[-1]


def hidden_size(model) -> int:
    return model.config.hidden_size
