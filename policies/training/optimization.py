"""The optimisation loop shared by every trainer: accumulation, clipping, schedule, precision,
checkpoints and resume, progress, and the DeepSpeed engine when one is configured."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from policies.training.checkpoints import LoopState, latest_checkpoint, load_checkpoint, save_checkpoint
from policies.training.fused_lora import use_fused_lora
from policies.training.recompute import checkpointing_kwargs
from policies.training.settings import OptimSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepLog:
    step: int
    epoch: int
    metrics: dict[str, float]
    tokens_per_s: float


LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float], int]]
"""Given example indices: (mean loss, metrics to log, tokens processed)."""


@dataclass
class TrainingLoop:
    model: torch.nn.Module
    settings: OptimSettings
    checkpoint_dir: Path | None = None
    deepspeed: str | None = None
    """A DeepSpeed config (`zero2`, `zero3` or a path): the model is wrapped in an engine by `prepare`."""
    rank: int = 0
    world_size: int = 1
    logs: list[StepLog] = field(default_factory=list)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        use_fused_lora(self.model)
        if self.settings.gradient_checkpointing != "off":
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=checkpointing_kwargs(self.model, self.settings.gradient_checkpointing))
        self.device = next(self.model.parameters()).device
        self.engine: Any = None
        self.optimizer = None if self.deepspeed else _optimizer(self.params, self.settings)
        self.scheduler = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        s = self.settings
        use_bf16 = s.precision == "bf16" or (
            s.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, total_steps: int) -> None:
        """Create the learning-rate schedule for a run of `total_steps` optimizer steps (under DeepSpeed: the
        engine, stepping the same schedule on its own optimizer)."""
        if self.deepspeed and self.engine is None:
            from policies.training.distributed import deepspeed_engine

            self.engine = deepspeed_engine(self.model, self.settings, self.deepspeed,
                                           lambda optimizer: _scheduler(optimizer, self.settings, total_steps))
            self.scheduler = self.engine.lr_scheduler
        elif self.optimizer is not None and self.scheduler is None:
            self.scheduler = _scheduler(self.optimizer, self.settings, total_steps)

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0]) if self.scheduler is not None else self.settings.learning_rate

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
        state = self.resume()
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
                    self.checkpoint(state)
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

    def checkpoint(self, state: LoopState) -> None:
        """Save a resumable checkpoint: ours on rank 0, or the engine's (every rank writes its shard)."""
        if self.checkpoint_dir is None:
            return
        if self.engine is not None:
            self.engine.save_checkpoint(str(self.checkpoint_dir / "engine"), tag=f"step-{state.step:08d}",
                                        client_state={"loop": asdict(state), "rng": _rng_state()})
            log.info("engine checkpoint at step %d", state.step)
            return
        if self.is_main:
            log.info("checkpoint %s", save_checkpoint(self.checkpoint_dir, self.model, self.optimizer,
                                                      self.scheduler, state))

    def resume(self) -> LoopState:
        """The state of the last complete checkpoint, loaded into the model, optimizer, schedule and RNG; a fresh
        state when there is none."""
        if self.checkpoint_dir is None:
            return LoopState()
        if self.engine is not None:
            engine_dir = self.checkpoint_dir / "engine"
            if not (engine_dir / "latest").is_file():
                return LoopState()
            path, client = self.engine.load_checkpoint(str(engine_dir))
            if path is None:
                return LoopState()
            _set_rng_state(client["rng"])
            log.info("resumed from engine checkpoint %s", path)
            return LoopState(**client["loop"])
        found = latest_checkpoint(self.checkpoint_dir)
        if found is None:
            return LoopState()
        state = load_checkpoint(found, self.model, self.optimizer, self.scheduler)
        log.info("resumed from %s at step %d", found, state.step)
        return state


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


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
