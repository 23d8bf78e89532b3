"""LoRA adapters: the unit of a policy version (PEFT format, safetensors).

Torch-free at import (peft is imported by the functions that use it), so a run config can embed `LoraSettings`.
"""

from __future__ import annotations

import json
import shutil
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


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""What PEFT loads an adapter from (a policy folder may hold more: extra heads, PEFT's own README)."""


def save_merged(model_dir: Path, adapter: Path | None, target: Path, *, dtype: str = "float32") -> None:
    """The base model with `adapter` merged into its weights (None: the base itself) as a plain HF model folder:
    safetensors, config.json, the tokenizer with its chat template, and a generation config only if the base has
    one. The merge is done in float32, then the weights are cast to `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(getattr(torch, dtype))
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    if not (model_dir / "generation_config.json").is_file():
        (target / "generation_config.json").unlink(missing_ok=True)


def copy_adapter(adapter: Path, target: Path, *, base_model: str) -> None:
    """The adapter's PEFT files in `target`, its config naming `base_model` as the model to load it onto."""
    for name in ADAPTER_FILES:
        if (adapter / name).is_file():
            shutil.copyfile(adapter / name, target / name)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
