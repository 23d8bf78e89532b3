"""LoRA adapters: the unit of a policy version (PEFT format, safetensors).

Torch-free at import (peft is imported by the functions that use it), so a run config can embed `LoraSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from policies.files import atomic_directory

if TYPE_CHECKING:
    import torch


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


def attach_trainable_adapter(model, lora: LoraSettings, parent: Path | None = None):
    """The base model with a trainable adapter: the parent policy's (continued) or a fresh one.

    A fresh LoRA adapter starts as the identity (B = 0), so the policy equals the reference at step 0.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if parent is not None:
        return PeftModel.from_pretrained(model, parent, is_trainable=True)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_adapter(model, target: Path, *extras: torch.nn.Module) -> Path:
    """Write the adapter (safetensors) and any extra heads atomically: a reader never sees half an adapter."""
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        for extra in extras:
            extra.save(staging)
    return target
