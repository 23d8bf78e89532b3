"""Atomic, resumable training checkpoints.

A checkpoint is a folder `step-N/` holding the trainable weights (safetensors), the optimizer and scheduler
state and the RNG states (torch.save, read back with weights_only=True), and `state.json`. It is written to a
staging folder, fsynced and renamed, and only then marked complete: a crash never leaves a checkpoint that
looks usable but is not.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from policies.files import atomic_directory

COMPLETE = "COMPLETE"


@dataclass
class LoopState:
    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    micro: int = 0
    """Micro-batches already consumed in `epoch`."""
    extra: dict[str, float] = field(default_factory=dict)
    """Trainer state beyond the optimizer's (e.g. PPO's adaptive KL coefficient)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, model: torch.nn.Module, optimizer, scheduler, state: LoopState,
                    keep: int = 2) -> Path:
    target = root / f"step-{state.step:08d}"
    with atomic_directory(target) as staging:
        save_file(trainable_state(model), staging / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()},
                   staging / "training_state.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state)))
    # The marker goes in last, after the rename: a folder without it is ignored on resume.
    (target / COMPLETE).write_text("")
    for old in sorted(root.glob("step-*"))[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(root: Path) -> Path | None:
    complete = sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> LoopState:
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    saved = torch.load(path / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(_as_python_rng_state(saved["python_rng"]))
    return LoopState(**json.loads((path / "state.json").read_text()))


def _as_python_rng_state(state):
    # weights_only loading may hand back lists where random.setstate wants tuples.
    version, internal, gauss = state
    return version, tuple(internal), gauss
