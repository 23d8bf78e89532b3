"""The run configuration: one YAML file validated at the edge, with environment overrides.

Any field can be overridden from the environment: `CAI_HOME=/data/cai`, `CAI_TRAIN__PREFERENCE__BETA=0.2`.
Pydantic only: the trainers' settings come from torch-free modules, so checking a config never loads torch.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from loop.config.section import Section, settings_section
from loop.config.tracking import TrackingSettings
from loop.config.training import BudgetSettings, ReplaySettings, WarmStartSettings, grpo_conflicts, launch_problems
from loop.dataset_files import PromptFile
from loop.evaluation.gates import GateSettings
from loop.evaluation.settings import EvaluationSettings
from policies.adapters import LoraSettings
from policies.models import DEFAULT_MODEL
from policies.serving.vllm_server import VllmServerSettings
from policies.training.settings import (
    GRPOSettings,
    LossType,
    PPOSettings,
    PreferenceSettings,
    RewardModelSettings,
    SFTSettings,
)
from rewards.settings import RewardSettings


class ModelSettings(Section):
    name: str = DEFAULT_MODEL
    """A built-in model name or a local HF model directory."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"


class PromptSettings(Section):
    files: list[PromptFile] = Field(min_length=1)
    """Prompt files (JSONL, CSV, parquet, `datasets` folders), as paths or `DatasetFile` mappings; config-relative."""
    per_iteration: int = Field(default=16, ge=1)
    draw: Literal["random", "twins"] = "random"
    """random: a plain draw from the pool. twins: prompts drawn with their look-alike of the other category
    (the `twin` field of a pool record: a benign-but-risky request and its harmful twin), so each iteration's
    pairs teach the boundary from both sides."""


class Backend(StrEnum):
    """Where the policy and the judge generate."""

    TRANSFORMERS = "transformers"
    """In-process, batched."""
    VLLM_SERVER = "vllm-server"
    """A vLLM OpenAI-compatible server (`cai serve`) at `server.url`, each policy version served as a LoRA adapter
    loaded at runtime."""


class GenerationSettings(Section):
    backend: Backend = Backend.TRANSFORMERS
    server: VllmServerSettings = VllmServerSettings()
    batch_size: int = Field(default=16, ge=1)
    samples_per_prompt: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)

    @property
    def served(self) -> bool:
        """The policy and the judge are clients of a vLLM server."""
        return self.backend is Backend.VLLM_SERVER


class CritiqueSettings(Section):
    rounds: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)


class JudgeSettings(Section):
    margin: float = Field(default=0.05, ge=0, lt=0.5)
    """Pairs whose |p(revision better) - 0.5| is below this are dropped."""
    batch_size: int = Field(default=8, ge=1)
    model: str | None = None
    """Another model as the judge. Default: the policy's base model with adapters off. transformers: a
    built-in name or a local HF directory; vllm-server: a model name served at `url`."""
    url: str | None = None
    """vllm-server only: the server of the judge's model (default: generation.server.url)."""
    method: Literal["labels", "ensemble", "self-consistency", "pointwise", "cot"] = "pointwise"
    """How the judge decides. pointwise by measurement on SmolLM2 (README: AI feedback): the most accurate there
    (none is reliable), no position or length bias, and the fewest verdicts the consistency check flags."""
    ensemble_k: int = Field(default=3, ge=1)
    """ensemble: how many principles of the drawn principle's category are averaged."""
    samples: int = Field(default=5, ge=1)
    """self-consistency: sampled verdicts per order."""
    min_label_prob: float = Field(default=1e-4, gt=0, lt=1)
    """Abstain when neither label reaches this probability (the labels are not among the likely tokens)."""
    label_range: tuple[float, float] = (0.1, 0.9)
    """Soft labels are clamped into this range: overconfident AI labels hurt (the CAI paper used 0.4-0.6)."""
    consistency_units: int = Field(default=4, ge=0)
    """The consistency check (`critique.consistency`), on the verdicts whose label makes a pair (`pairs.source:
    judged`): each winner is judged again without each of its first N parts (paragraphs, else lines or sentences,
    from both ends inwards); a winner that stops winning marks the verdict suspect and keeps it out of training.
    0 turns it off; each part costs one more judgment."""

    @field_validator("label_range")
    @classmethod
    def _range_around_one_half(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < 0.5 < high <= 1:
            raise ValueError("must be [low, high] with 0 <= low < 0.5 < high <= 1")
        return value


class SamplerSettings(Section):
    """Which labelled pairs are trained on."""

    margin_end: float | None = Field(default=None, ge=0, lt=0.5)
    """The confidence threshold anneals from judge.margin (iteration 1) to this over `anneal_iterations`
    (default: no annealing)."""
    anneal_iterations: int = Field(default=5, ge=1)
    length_tolerance: float | None = Field(default=0.1, ge=0)
    """Reject the pairs with the largest length gap until |mean(chosen - rejected length)| is at most this
    fraction of the mean rejected length: no systematic "chosen is longer" (null: no length control)."""
    max_pairs: int | None = Field(default=None, ge=1)
    """A cap per iteration, taken round-robin across principles, most confident first (stratified)."""
    deduplicate: bool = True
    """Drop pairs already trained on in an earlier iteration of the run (same prompt, chosen and rejected)."""


class SampledSettings(Section):
    """Best-of-K (`pairs.source: sampled`): K answers per prompt, scored by the rewards, best over worst."""

    k: int = Field(default=3, ge=2)
    positive: int = Field(default=1, ge=0)
    """Of the K, answers under a principle's positive steering (system prompt and prefix)."""
    negative: int = Field(default=1, ge=0)
    """Of the K, answers under a principle's negative steering; the rest are plain samples of π_i."""
    margin: float = Field(default=0.25, gt=0)
    """The smallest reward gap between the best and the worst answer that makes a pair ("no-spread" below). With
    checks only, the reward is the share of checks passed, so one failed check of a category's three costs 1/3."""

    @model_validator(mode="after")
    def _steered_within_k(self) -> SampledSettings:
        if self.positive + self.negative > self.k:
            raise ValueError(f"positive + negative ({self.positive + self.negative}) is more than k ({self.k})")
        return self


class PairSettings(Section):
    source: Literal["judged", "contrastive", "revision", "mixed", "sampled"] = "judged"
    """judged: the judge compares answer and revision. contrastive: the policy answers under a principle's
    positive and negative system prompt, labelled by construction (RLCD). revision: the revision preferred
    unless the judge confidently disagrees. mixed: revision and contrastive pairs together. sampled: K
    answers per prompt scored by the rewards, the best over the worst (`sampled`)."""
    sampled: SampledSettings = SampledSettings()
    confirm: bool = False
    """contrastive: also judge the two answers and drop the pairs the judge confidently disagrees with."""
    principles_by_category: bool = True
    """Draw principles only among those whose `applies_to` lists the prompt's category (or is empty)."""
    sampler: SamplerSettings = SamplerSettings()


LOOP_SET_FIELDS = {"seed": "each trainer's seed derives from the run's top-level `seed`",
                   "loss": "the preference loss is named by `train.trainer`"}
"""Trainer settings the loop fills in itself, so a run config cannot set them (one field per fact)."""

PreferenceSection = settings_section(PreferenceSettings, without=LOOP_SET_FIELDS)
SFTSection = settings_section(SFTSettings, without=LOOP_SET_FIELDS)
RewardModelSection = settings_section(RewardModelSettings, without=LOOP_SET_FIELDS)
PPOSection = settings_section(PPOSettings, without=LOOP_SET_FIELDS)
GRPOSection = settings_section(GRPOSettings, without=LOOP_SET_FIELDS)
USED_WHEN = {"preference": "a preference trainer (train.trainer other than ppo and grpo)",
             "sft": "train.sft_on_revisions: true", "reward_model": "train.trainer: ppo", "ppo": "train.trainer: ppo",
             "grpo": "train.trainer: grpo"}
TRAINER_SETTINGS = {"preference": PreferenceSettings, "sft": SFTSettings, "reward_model": RewardModelSettings,
                    "ppo": PPOSettings, "grpo": GRPOSettings}


class TrainSettings(Section):
    trainer: LossType | Literal["ppo", "grpo"] = LossType.DPO
    """A preference loss trained on the judge's pairs, ppo (a reward model on the pairs, then PPO), or grpo (GRPO
    on rollouts of the iteration's prompts, scored by the run's `rewards`: no answers, verdicts or pairs)."""
    preference: PreferenceSection = PreferenceSection()
    """Used unless trainer is ppo or grpo. Its epochs (or max_steps) times `budget.max_pairs` is the iteration's
    training budget."""
    replay: ReplaySettings = ReplaySettings()
    budget: BudgetSettings = BudgetSettings()
    warm_start: WarmStartSettings = WarmStartSettings()
    sft_on_revisions: bool = False
    """First fine-tune on the revisions (the supervised stage of Constitutional AI), then train as above."""
    sft: SFTSection = SFTSection()
    """Used with sft_on_revisions."""
    reward_model: RewardModelSection = RewardModelSection()
    """Used with trainer: ppo."""
    ppo: PPOSection = PPOSection()
    """Used with trainer: ppo."""
    grpo: GRPOSection = GRPOSection()
    """Used with trainer: grpo."""
    lora: LoraSettings = LoraSettings()
    """A fresh adapter's shape; a policy that continues its parent's adapter keeps the parent's shape."""
    launcher: Literal["python", "torchrun", "deepspeed", "slurm"] = "python"
    processes: int = Field(default=1, ge=1)
    """Training processes per node (GPUs)."""
    deepspeed: str | None = None
    """`zero2`, `zero3` or a DeepSpeed JSON config, for more than one process."""
    nodes: int = Field(default=1, ge=1)
    """Train across this many nodes, `processes` each. With `launcher: torchrun` the train stage is a gang of one
    shard per node, each taken by a `cai worker --queues train` on its node (`cai run` with a broker); with
    `launcher: slurm` one worker inside a Slurm allocation starts every node with srun."""
    rendezvous: str | None = None
    """HOST:PORT where the nodes meet (hosted by node rank 0). Default: node rank 0's worker picks a free port on
    its host name and publishes it in the database for the others."""
    rendezvous_timeout_s: float = Field(default=300.0, gt=0)
    """A gang that has not assembled within this is torn down and retried (with a new rendezvous id)."""
    slurm_args: list[str] = []
    """Extra srun arguments with `launcher: slurm` (partition, account, GPUs per node)."""

    @model_validator(mode="before")
    @classmethod
    def _loop_set_fields_are_not_config(cls, data):
        if isinstance(data, dict):
            for section in TRAINER_SETTINGS:
                values = data.get(section)
                for name, reason in LOOP_SET_FIELDS.items():
                    if isinstance(values, dict) and name in values:
                        raise ValueError(f"train.{section}.{name} cannot be set: {reason}")
        return data

    @model_validator(mode="after")
    def _every_field_acts(self) -> TrainSettings:
        for section in self.used_sections():
            try:
                self.trainer_settings(section, seed=0)
            except ValidationError as exc:
                raise ValueError("; ".join(
                    f"train.{'.'.join(map(str, (section, *e['loc'])))}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors())) from None
        for section in sorted(set(TRAINER_SETTINGS) - set(self.used_sections())):
            if getattr(self, section) != type(getattr(self, section))():
                raise ValueError(f"train.{section} is set but unused: it applies only with {USED_WHEN[section]}")
        if problems := launch_problems(self):
            raise ValueError(problems[0])
        if self.deepspeed is not None and any(
                getattr(self, s).optimizer != "adamw" for s in self.used_sections()):
            raise ValueError("under DeepSpeed the optimizer is the config's AdamW: leave `optimizer` at adamw")
        return self

    @property
    def gang_nodes(self) -> int:
        """How many shards (one per node) the train stage is split into for the daemon's train workers."""
        return self.nodes if self.launcher == "torchrun" else 1

    def needs_workers(self, command: str) -> str | None:
        """Why `command`, which trains in its own process, cannot run this section (a gang), or None."""
        if self.gang_nodes == 1:
            return None
        return (f"train.nodes: {self.nodes} with train.launcher: torchrun trains as a gang of `cai worker --queues "
                f"train` processes, one per node; {command} trains in its own process: run `cai run` with "
                "CAI_BROKER_URL set and a train worker on each node (or use train.launcher: slurm)")

    def used_sections(self) -> list[str]:
        """The trainer sections this configuration runs, in order."""
        main = {"ppo": ["reward_model", "ppo"], "grpo": ["grpo"]}.get(str(self.trainer), ["preference"])
        return (["sft"] if self.sft_on_revisions else []) + main

    def trainer_settings(self, section: str, seed: int):
        """The full, validated settings of one trainer: the section plus what the loop sets (seed, loss)."""
        values = getattr(self, section).model_dump()
        if section == "preference":
            values["loss"] = self.trainer
        return TRAINER_SETTINGS[section](**values, seed=seed)


class ServiceSettings(Section):
    """How `cai run` splits an iteration for its workers (`cai worker`); no result depends on these."""

    shard_size: int = Field(default=16, ge=1)
    """Samples per shard of the generate, critique and judge stages."""
    shard_lease_s: float = Field(default=60.0, gt=0)
    """A worker's claim on a shard lasts this long past its last heartbeat; then the shard is handed out again."""
    requeue_after_s: float = Field(default=300.0, gt=0)
    """A shard sent this long ago and still not started is sent again (a lost message, a restarted broker)."""
    poll_s: float = Field(default=1.0, gt=0)
    """How often the controller looks at the database for finished shards and operator requests."""
    max_attempts: int = Field(default=5, ge=1)
    """Claims of one shard before the iteration fails with the shard's last error."""


class RunConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAI_", env_nested_delimiter="__", extra="forbid")

    home: Path = Path("~/.cache/cai")
    """CAI_HOME: caches that outlive runs (converted models)."""
    seed: int = 0
    threads: int | None = None
    """Torch threads; default: all cores."""
    constitution: str = "default"
    """A shipped constitution's name, or a path to a YAML file (relative to the config file)."""
    model: ModelSettings = ModelSettings()
    prompts: PromptSettings
    generation: GenerationSettings = GenerationSettings()
    critique: CritiqueSettings = CritiqueSettings()
    judge: JudgeSettings = JudgeSettings()
    pairs: PairSettings = PairSettings()
    rewards: RewardSettings = RewardSettings()
    """What a sampled answer is scored by: reward kinds, their weights and the refusal detector of the checks."""
    train: TrainSettings = TrainSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    """The held-out sets every candidate policy is measured on (default: the shipped data/eval sets)."""
    gates: GateSettings = GateSettings()
    """The limits that decide whether a candidate is promoted, rejected or halts the run."""
    service: ServiceSettings = ServiceSettings()
    """The daemon (`cai run`): shards, claims and polling."""
    tracking: TrackingSettings = TrackingSettings()
    """Metrics also sent to TensorBoard and W&B (`loop.tracking`); off by default."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, *args, **kwargs):
        # The environment wins over the file, so one config can be reused with a different CAI_HOME.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _judge_server_needs_the_server_backend(self) -> RunConfig:
        if self.judge.url is not None and not self.generation.served:
            raise ValueError("judge.url is only used with generation.backend: vllm-server")
        return self

    @model_validator(mode="after")
    def _warm_start_reads_sampled_answers(self) -> RunConfig:
        if self.train.warm_start.iterations and self.pairs.source != "sampled":
            raise ValueError(f"train.warm_start needs pairs.source: sampled (it trains on the scored sampled "
                             f"answers), not {self.pairs.source}")
        return self

    @model_validator(mode="after")
    def _grpo_trains_on_rollouts(self) -> RunConfig:
        if self.train.trainer == "grpo" and (problems := grpo_conflicts(self)):
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _task_gate_reads_a_task_set(self) -> RunConfig:
        if self.gates.max_task_accuracy_drop is not None and all(s.role != "task" for s in self.evaluation.sets):
            raise ValueError("gates.max_task_accuracy_drop needs an eval set of role task (evaluation.sets): "
                             "task_accuracy_drop is measured on those")
        return self
