"""The optimisation loop shared by every trainer: accumulation, clipping, schedule, precision,
checkpoints and resume, progress, and the DeepSpeed engine when one is configured."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from policies.training.checkpoints import LoopState, latest_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


class OptimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=5e-4, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """SGD keeps no optimizer state: the leanest choice when memory is what limits training."""
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast where the device supports it (CUDA with bf16), else fp32."""
    length_bucketing: bool = True
    seed: int = 0
    checkpoint_every: int = Field(default=0, ge=0)
    """Optimizer steps between resumable checkpoints; 0 keeps none."""


@dataclass(frozen=True)
class StepLog:
    step: int
    epoch: int
    metrics: dict[str, float]
    tokens_per_s: float


@dataclass
class MicroBatch:
    """What a trainer's loss function receives: its examples and their share of the optimizer step."""

    indices: list[int]
    weight: float
    """n_examples / n_examples_in_window: summing weight x mean loss gives the window's mean loss exactly."""


LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float], int]]
"""Given example indices: (mean loss, metrics to log, tokens processed)."""


@dataclass
class TrainingLoop:
    model: torch.nn.Module
    settings: OptimSettings
    checkpoint_dir: Path | None = None
    engine: Any = None
    """A DeepSpeed engine wrapping `model`, when training is distributed."""
    rank: int = 0
    world_size: int = 1
    logs: list[StepLog] = field(default_factory=list)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        if self.settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.device = next(self.model.parameters()).device
        self.optimizer = None if self.engine else _optimizer(self.params, self.settings)
        self.scheduler = None

    def autocast(self):
        s = self.settings
        use_bf16 = s.precision == "bf16" or (
            s.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, total_steps: int) -> None:
        """Create the learning-rate schedule for a run of `total_steps` optimizer steps."""
        if self.optimizer is not None and self.scheduler is None:
            self.scheduler = _scheduler(self.optimizer, self.settings, total_steps)

    def step_window(self, window: Sequence[list[int]], loss_fn: LossFn) -> tuple[dict[str, float], int]:
        """One optimizer step over a window of micro-batches: (weighted mean metrics, tokens processed).

        Each micro-batch's mean loss is weighted by its share of the window's examples, so the step follows
        the gradient of the window's mean loss exactly, however the window is split.
        """
        self.model.train()
        n_window = sum(len(b) for b in window)
        sums: dict[str, float] = {}
        tokens = 0
        for batch in window:
            with self.autocast():
                loss, metrics, n_tokens = loss_fn(batch)
            self._backward(loss * (len(batch) / n_window))
            if self.engine is not None:  # the engine counts micro-batches and steps at its accumulation boundary
                self.engine.step()
            tokens += n_tokens
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value * len(batch) / n_window
        sums["grad_norm"] = self._step()
        return sums, tokens

    def run(self, plan: Callable[[int], list[list[int]]], loss_fn: LossFn,
            on_step: Callable[[StepLog], None] | None = None) -> list[StepLog]:
        """Train over `plan(epoch)` (micro-batches of example indices) for the configured epochs or steps."""
        s = self.settings
        windows_per_epoch = math.ceil(len(self._shard(plan(0))) / s.grad_accum)
        total_steps = int(min(s.max_steps or math.inf, windows_per_epoch * s.epochs))
        self.prepare(total_steps)
        state = self._resume()
        tokens, started = 0, time.perf_counter()
        while state.epoch < s.epochs and state.step < total_steps:
            micro_batches = self._shard(plan(state.epoch))
            windows = [micro_batches[i:i + s.grad_accum] for i in range(0, len(micro_batches), s.grad_accum)]
            if self.engine is not None and len(windows[-1]) < s.grad_accum:
                # DeepSpeed steps every grad_accum micro-batches: a short trailing window would spill over.
                log.warning("dropping %d micro-batches that do not fill an accumulation window", len(windows[-1]))
                windows.pop()
            consumed = 0
            for window in windows:
                if consumed < state.micro:  # replaying a resumed epoch up to where it stopped
                    consumed += len(window)
                    continue
                metrics, n_tokens = self.step_window(window, loss_fn)
                tokens += n_tokens
                consumed += len(window)
                state = LoopState(step=state.step + 1, epoch=state.epoch, micro=consumed)
                record = StepLog(state.step, state.epoch, metrics, tokens / (time.perf_counter() - started))
                self.logs.append(record)
                if on_step:
                    on_step(record)
                if s.checkpoint_every and state.step % s.checkpoint_every == 0:
                    self._checkpoint(state)
                if state.step >= total_steps:
                    break
            else:
                state = LoopState(step=state.step, epoch=state.epoch + 1, micro=0)
        self.model.eval()
        return self.logs

    def _shard(self, micro_batches: list[list[int]]) -> list[list[int]]:
        """This rank's micro-batches; every rank gets the same number, or collectives would wait forever."""
        usable = len(micro_batches) - len(micro_batches) % self.world_size
        if usable == 0:
            raise ValueError(f"{len(micro_batches)} micro-batches cannot be shared by {self.world_size} processes")
        return micro_batches[:usable][self.rank::self.world_size]

    def _backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            # The loss is already weighted by its share of the window; the engine must not divide again.
            self.engine.backward(loss, scale_wrt_gas=False)
        else:
            loss.backward()

    def _step(self) -> float:
        if self.engine is not None:
            return float(self.engine.get_global_grad_norm() or 0.0)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _checkpoint(self, state: LoopState) -> None:
        if self.checkpoint_dir is None or self.engine is not None or self.rank != 0:
            return
        path = save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, state)
        log.info("checkpoint %s", path)

    def _resume(self) -> LoopState:
        if self.checkpoint_dir is None or self.engine is not None:
            return LoopState()
        found = latest_checkpoint(self.checkpoint_dir)
        if found is None:
            return LoopState()
        state = load_checkpoint(found, self.model, self.optimizer, self.scheduler)
        log.info("resumed from %s at step %d", found, state.step)
        return state


def _optimizer(params: Sequence[torch.nn.Parameter], s: OptimSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)


def _scheduler(optimizer, s: OptimSettings, total_steps: int):
    def factor(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / (s.warmup_steps + 1)
        if s.scheduler == "constant":
            return 1.0
        progress = (step - s.warmup_steps) / max(1, total_steps - s.warmup_steps)
        if s.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def emit_progress(kind: str, payload: dict[str, Any]) -> None:
    """One machine-readable line on stdout, read by the launcher in the parent process."""
    print(f"CAI_PROGRESS {json.dumps({'kind': kind, **payload})}", flush=True)
