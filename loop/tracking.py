"""A run's metrics also sent to TensorBoard event files and to Weights & Biases (`tracking:` in the run config).

One `IterationTracker` per iteration takes three kinds of event, each from one place: every training step (the
train stage's progress callback), every finished stage with its wall time and counts, and the evaluation with the
gate decision when the iteration finishes (both from `loop.pipeline.iteration`). A sink's package is imported only
when the sink is configured, and a sink that fails is logged and dropped: tracking never fails an iteration.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from loop.config import ConfigError
from loop.config.tracking import TrackingSettings, WandbSettings

log = logging.getLogger(__name__)

STEP = "global_step"
"""The axis of training steps: one count over every trainer run of every iteration of the run."""
ITERATION = "iteration"
"""The axis of the stages' values, the evaluation and the gate decision."""

GATE_OUTCOMES = {"promote": 1.0, "reject": 0.0, "halt": -1.0}
"""The gate decision as a number, so it can be charted beside the metrics that made it."""

STAGE_SECTIONS = {"generate": ("samples",), "critique": ("critiques", "revisions"),
                  "judge": ("comparisons", "judge"), "pairs": ("pairs", "pair_sources", "sampler"),
                  "train": ("train", "sft", "reward_model")}
"""The sections of the iteration summary (`loop.operate.summary`) that each stage fills."""


def _missing(package: str) -> ConfigError:
    return ConfigError(f"tracking.{package} needs the {package} package: pip install 'cai[tracking]' "
                       f"(or pip install {package})")


def check_tracking(settings: TrackingSettings) -> None:
    """Refuse a configured sink whose package is not installed, before the run writes anything."""
    for package, configured in (("tensorboard", settings.tensorboard), ("wandb", settings.wandb)):
        if configured is not None and importlib.util.find_spec(package) is None:
            raise _missing(package)


class Tracker(Protocol):
    """A sink: values keyed by tag, each tag charted against one axis (`STEP` or `ITERATION`)."""

    name: str

    def scalars(self, values: Mapping[str, float], axis: str, step: int) -> None: ...

    def texts(self, values: Mapping[str, str], axis: str, step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in `log_dir`; each `cai iterate` adds its own file there, and TensorBoard reads them all."""

    name = "tensorboard"

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard") from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], axis: str, step: int) -> None:
        # A TensorBoard tag has one step axis, and each tag stays on one: the axis needs no recording.
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def texts(self, values: Mapping[str, str], axis: str, step: int) -> None:
        for tag, text in values.items():
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per cai run (its id derived from the run, so every `cai iterate` resumes it)."""

    name = "wandb"

    def __init__(self, settings: WandbSettings, run_dir: Path, *, run_name: str, run_key: str,
                 config: dict[str, Any]):
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb") from exc
        # Under the run directory unless WANDB_DIR says otherwise: an offline run stays beside the run it tracks.
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(run_dir)}
        # console="off": W&B would otherwise wrap the process's stdout and stderr, the CLI's own output.
        self.run = wandb.init(project=settings.project, mode=settings.mode, name=run_name, id=run_key or None,
                              resume="allow", config=config, settings=wandb.Settings(console="off"), **where)
        self.defined: set[str] = set()

    def _log(self, values: Mapping[str, Any], axis: str, step: int) -> None:
        # W&B's own step may only grow, and training steps outnumber iterations: each key is charted against
        # its own axis instead, logged beside it.
        for key in sorted(values.keys() - self.defined):
            self.run.define_metric(key, step_metric=axis)
        self.defined |= values.keys()
        self.run.log({axis: step, **values})

    def scalars(self, values: Mapping[str, float], axis: str, step: int) -> None:
        self._log(values, axis, step)

    def texts(self, values: Mapping[str, str], axis: str, step: int) -> None:
        self._log(values, axis, step)

    def flush(self) -> None:
        """W&B writes as it goes."""

    def close(self) -> None:
        self.run.finish()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """The numbers in `value` (nested mappings too), tagged `prefix/key/...`; None and text are left out."""
    if isinstance(value, Mapping):
        return {tag: number for key, item in value.items() for tag, number in flatten(f"{prefix}/{key}", item).items()}
    return {prefix: float(value)} if _number(value) else {}


def stage_values(stage: str, summary: Mapping[str, Any]) -> dict[str, float]:
    """A finished stage's wall time and counts, read off the iteration summary."""
    values = flatten(f"stage/{stage}/wall_s", summary.get("wall_s", {}).get(stage))
    for section in STAGE_SECTIONS.get(stage, ()):
        value = summary.get(section)
        # The train stage's own metrics (a section named like it) read stage/train/NAME, not stage/train/train/NAME.
        nested = section == stage and isinstance(value, Mapping)
        values |= flatten(f"stage/{stage}" if nested else f"stage/{stage}/{section}", value)
    return values | flatten(f"stage/{stage}/serving", summary.get("serving", {}).get(stage))


def decision_values(summary: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """(numbers, texts) of the iteration's evaluation and gate decision."""
    evaluation, gate = summary.get("evaluation"), summary.get("gate")
    scalars: dict[str, float] = {}
    texts: dict[str, str] = {}
    if evaluation:
        scalars |= flatten("evaluation", evaluation["metrics"]) | {"evaluation/wall_s": evaluation["wall_s"]}
    if gate:
        scalars["gate/outcome"] = GATE_OUTCOMES.get(gate["outcome"], math.nan)
        texts["gate/decision"] = (f"{gate['outcome']} candidate {gate['candidate'] or '(none)'}; "
                                  f"current policy {gate['current_policy']}")
        texts["gate/reasons"] = "; ".join(gate["reasons"]) or "every gate passed"
    return scalars, texts


class IterationTracker:
    """One iteration's events, sent to every sink still working; without sinks every call does nothing."""

    def __init__(self, sinks: list[Tracker], iteration: int, steps_before: int = 0):
        self.sinks = list(sinks)
        self.iteration = iteration
        self.base = self.highest = steps_before
        """Global steps: a trainer run's step k is `base + k`, and the next run continues after the highest."""
        self.trainer_run: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    def _send(self, call: Callable[[Tracker], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as exc:  # a disk error, a lost connection: logged, and the iteration goes on
                log.warning("%s tracking failed (%s: %s); nothing more is sent to it in this iteration", sink.name,
                            type(exc).__name__, exc)
                self.sinks.remove(sink)

    def training_step(self, run: str, event: Mapping[str, Any]) -> None:
        """One step of the trainer run whose metrics are recorded under stage `run` (train, sft, ...)."""
        if not self.sinks:
            return
        if run != self.trainer_run:
            self.trainer_run, self.base = run, self.highest
        step = self.base + int(event["step"])
        self.highest = max(self.highest, step)
        values = {f"trainer/{run}/{key}": float(value) for key, value in event.items()
                  if key != "step" and _number(value)}
        self._send(lambda sink: sink.scalars(values, STEP, step))

    def stage_done(self, stage: str, summary: Callable[[], Mapping[str, Any]]) -> None:
        """A stage finished: its values from the iteration summary (`summary` is asked only with sinks)."""
        if not self.sinks:
            return
        try:
            values = stage_values(stage, summary())
        except Exception as exc:
            log.warning("stage %s not tracked: its summary failed (%s: %s)", stage, type(exc).__name__, exc)
            return
        self._send(lambda sink: (sink.scalars(values, ITERATION, self.iteration), sink.flush()))

    def decided(self, summary: Mapping[str, Any]) -> None:
        """The iteration finished: every evaluation metric and the gate decision."""
        if not self.sinks:
            return
        scalars, texts = decision_values(summary)
        self._send(lambda sink: (sink.scalars(scalars, ITERATION, self.iteration),
                                 sink.texts(texts, ITERATION, self.iteration), sink.flush()))

    def close(self) -> None:
        self._send(lambda sink: sink.close())
        self.sinks = []


def open_tracker(settings: TrackingSettings, run_dir: Path, *, iteration: int, steps_before: int = 0,
                 run_name: str = "", run_key: str = "", config: dict[str, Any] | None = None) -> IterationTracker:
    """The configured sinks of one iteration. A missing package is a ConfigError; a sink that cannot start for
    another reason (an unwritable folder, no W&B login) is logged and left out."""
    makers: list[tuple[str, Callable[[], Tracker]]] = []
    if settings.tensorboard is not None:
        log_dir = run_dir / settings.tensorboard.expanduser()  # an absolute folder stays itself
        makers.append(("tensorboard", lambda: TensorBoardTracker(log_dir)))
    if settings.wandb is not None:
        wandb_settings = settings.wandb
        makers.append(("wandb", lambda: WandbTracker(wandb_settings, run_dir, run_name=run_name or run_dir.name,
                                                     run_key=run_key, config=config or {})))
    sinks = []
    for name, make in makers:
        try:
            sinks.append(make())
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("%s tracking did not start (%s: %s); the iteration runs without it", name,
                        type(exc).__name__, exc)
    return IterationTracker(sinks, iteration, steps_before)
