"""What a trainer child process is told to do: the spec the loop writes as JSON, and the data files it names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from policies.adapters import LoraSettings
from policies.training.settings import GRPOSettings, PPOSettings, PreferenceSettings, RewardModelSettings, SFTSettings
from rewards.settings import RewardSettings

TrainerKind = Literal["preference", "sft", "reward_model", "ppo", "grpo"]


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: TrainerKind
    model_dir: Path
    data: Path
    """JSONL: {prompt, chosen, rejected, target} for preference and reward_model, {prompt, response} for sft,
    {prompt} for ppo, {prompt, category, task, principle} for grpo (`task` a `rewards.TaskSpec` or null,
    `principle` a principle id or null); `prompt` is a list of chat messages."""
    output_dir: Path
    parent_adapter: Path | None = None
    """Continue training this adapter (the parent policy); otherwise start a fresh one."""
    lora: LoraSettings = LoraSettings()
    preference: PreferenceSettings = PreferenceSettings()
    sft: SFTSettings = SFTSettings()
    reward_model: RewardModelSettings = RewardModelSettings()
    ppo: PPOSettings = PPOSettings()
    grpo: GRPOSettings = GRPOSettings()
    reward_model_dir: Path | None = None
    """PPO's reward (and GRPO's `reward_model` kind): a directory written by a reward_model run (adapter, head)."""
    rewards: RewardSettings | None = None
    """GRPO's reward kinds and weights (a run config's `rewards:`); None: the `task` kind alone."""
    constitution: Path | None = None
    """GRPO: the constitution (`constitution.load_constitution`'s path) that the `checks` kind grades against and
    that the records' `principle` ids name; required by `checks`."""
    reference_cache: Path | None = None
    """Preference runs: a folder of reference log-probs per pair, shared by a run's trainer runs
    (`policies.training.reference_cache`), so a replayed pair is not scored again."""
    rollout_server: str | None = None
    """PPO and GRPO: the URL of a vLLM server serving the base model; rollouts are sampled there from the current
    adapter."""
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = None
    deepspeed: str | None = None
    """`zero2`, `zero3` or a DeepSpeed JSON config; required when more than one process trains."""

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def result_path(self) -> Path:
        return self.output_dir / "result.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
