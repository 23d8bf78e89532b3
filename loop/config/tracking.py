"""The `tracking:` section: where a run's metrics are also sent (TensorBoard event files, Weights & Biases).

Both sinks are off unless configured, and W&B stays offline unless `mode: online` is set, so nothing leaves the
machine by default. The sinks themselves live in `loop.tracking`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from loop.config.section import Section


class WandbSettings(Section):
    project: str
    mode: Literal["offline", "online"] = "offline"
    """offline: the run is written under the run directory (or WANDB_DIR), for `wandb sync` later; online:
    uploaded as it runs (needs `wandb login` or WANDB_API_KEY)."""


class TrackingSettings(Section):
    tensorboard: Path | None = None
    """A folder for TensorBoard event files, relative to the run directory unless absolute."""
    wandb: WandbSettings | None = None

    @property
    def enabled(self) -> bool:
        return self.tensorboard is not None or self.wandb is not None
