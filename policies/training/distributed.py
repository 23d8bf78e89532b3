"""Multi-process training: DeepSpeed ZeRO under torchrun or the deepspeed launcher.

A single process needs nothing from here. Under a launcher (WORLD_SIZE > 1) the model is wrapped in a
DeepSpeed engine built from one of the shipped ZeRO configs, whose "auto" values are filled from our settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the loop imports this module; the settings are only read here
    from policies.training.optimization import OptimSettings

SHIPPED_CONFIGS = ("zero2", "zero3")


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def is_partitioned(parameter: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter: its full value exists only inside its own module's forward."""
    return hasattr(parameter, "ds_id")


def resolve_deepspeed_config(name_or_path: str) -> Path:
    """`zero2` / `zero3` name a shipped config; anything else is a path."""
    if name_or_path in SHIPPED_CONFIGS:
        return Path(str(resources.files("policies.training").joinpath("deepspeed", f"{name_or_path}.json")))
    return Path(name_or_path)


def fill_config(config: dict[str, Any], settings: OptimSettings, device: torch.device) -> dict[str, Any]:
    values = {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "gradient_clipping": settings.max_grad_norm,
        "lr": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "enabled": device.type == "cuda" and torch.cuda.is_bf16_supported() and settings.precision != "fp32",
    }

    def fill(node):
        if isinstance(node, dict):
            return {k: (values[k] if v == "auto" and k in values else fill(v)) for k, v in node.items()}
        return node

    return fill(config)


def deepspeed_engine(model: torch.nn.Module, settings: OptimSettings, config_name: str, lr_scheduler=None):
    """Initialise the process group (gloo on CPU, nccl on GPUs) and wrap `model` in a DeepSpeed engine.

    `lr_scheduler` (optimizer -> scheduler) is our schedule, stepped by the engine; a config's own scheduler
    section would be a second, conflicting one, so it is refused.
    """
    import deepspeed

    device = next(model.parameters()).device
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    config = fill_config(json.loads(resolve_deepspeed_config(config_name).read_text()), settings, device)
    if "scheduler" in config:
        raise ValueError(f"DeepSpeed config {config_name}: remove its `scheduler`; training uses the settings' "
                         "scheduler and warmup_steps")
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config, lr_scheduler=lr_scheduler)
    return engine
