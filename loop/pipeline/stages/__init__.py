"""The stages of one iteration: one module per stage, and their registry (`STAGES`, in run order)."""

from loop.pipeline.stages.registry import STAGES, Stage

__all__ = ["STAGES", "Stage"]
