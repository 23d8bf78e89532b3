"""What the train stage feeds its trainers besides this iteration's pairs: replayed pairs of earlier iterations,
a cap on the pairs trained, and an SFT warm start on checked samples (`train.replay`, `train.budget`,
`train.warm_start`); and what of a run config cannot act under `train.trainer: grpo`, which trains on rollouts
of the iteration's prompts instead of pairs."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from loop.config.section import Section


class ReplaySettings(Section):
    """A replay buffer: pairs of earlier iterations trained on again, so a run learns from more than one
    iteration's pairs. Each replayed pair is recorded (the `replays` table)."""

    max_pairs: int = Field(default=0, ge=0)
    """At most this many earlier pairs per iteration (0: no replay), most recent iterations first, none that
    repeats a pair already taken (same prompt, chosen and rejected). Pairs of iterations whose candidate the
    gates rejected are kept: a pair's label does not depend on what became of the policy trained on it."""
    from_iterations: int | None = Field(default=None, ge=1)
    """Only the last this many earlier iterations (default: all of them)."""

    @model_validator(mode="after")
    def _window_needs_replay(self) -> ReplaySettings:
        if self.from_iterations is not None and not self.max_pairs:
            raise ValueError("from_iterations applies only with max_pairs > 0 (replay is off)")
        return self


class BudgetSettings(Section):
    """How much one iteration trains: pairs here; epochs and steps per trainer (`train.preference.epochs`,
    `max_steps`), so the budget is max_pairs x epochs, or max_steps when that is set."""

    max_pairs: int | None = Field(default=None, ge=1)
    """At most this many pairs trained per iteration (default: all): this iteration's first, then replays, each
    taken round-robin across principles, most confident first (as the sampler stratifies)."""


class WarmStartSettings(Section):
    """A short SFT run before preference training (a cold start): the policy fine-tuned on its own best sampled
    answer of each prompt that passes every check (rejection-sampling fine-tuning), so that best-of-K sampling
    has something to pick from. Needs `pairs.source: sampled`, which scores the sampled answers. The other SFT
    settings (batch size, max_length, optimizer) are the trainer's defaults."""

    iterations: int = Field(default=0, ge=0)
    """Warm-start the run's first this many iterations (0: never)."""
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: int = Field(default=1, ge=1)
    max_completion_length: int | None = Field(default=None, ge=1)
    """Train on only each answer's first this many tokens, where a refusal is decided."""

    @model_validator(mode="after")
    def _settings_need_iterations(self) -> WarmStartSettings:
        unused = [name for name in ("learning_rate", "epochs", "max_completion_length")
                  if getattr(self, name) != type(self).model_fields[name].default]
        if unused and not self.iterations:
            raise ValueError(f"{', '.join(unused)} applies only with iterations > 0 (the warm start is off)")
        return self

    def applies_to(self, iteration: int) -> bool:
        """Whether iteration `iteration` (1-based) starts with a warm start."""
        return iteration <= self.iterations


GRPO_KINDS = ("checks", "task")
"""The reward kinds GRPO trains on in the loop (`GRPO_KINDS_WHY`)."""
GRPO_KINDS_WHY = "the trainer process holds no judge model, and a grpo run trains no reward model"


def grpo_conflicts(config: Any) -> list[str]:
    """What a run config (`RunConfig`) sets that would do nothing, or could not work, under `train.trainer: grpo`:
    its iterations make no answers, revisions or pairs (the generate, critique, judge and pairs stages skip)."""
    train = config.train
    problems = [f"train.{name} is set but unused: it selects preference pairs (or scored sampled answers), which "
                f"a grpo iteration does not make" for name in ("replay", "budget", "warm_start")
                if getattr(train, name) != type(getattr(train, name))()]
    if train.sft_on_revisions:
        problems.append("train.sft_on_revisions needs revisions, which a grpo iteration does not make")
    if config.generation.samples_per_prompt > 1:
        problems.append("generation.samples_per_prompt is unused with train.trainer: grpo (the generate stage "
                        "skips): train.grpo.group_size says how many completions each prompt gets")
    refused = sorted({c.kind for c in config.rewards.components} - set(GRPO_KINDS))
    if refused:
        problems.append(f"rewards kind {refused[0]} is not available to train.trainer: grpo (only "
                        f"{', '.join(GRPO_KINDS)}): {GRPO_KINDS_WHY}")
    return problems


def launch_problems(train: Any) -> list[str]:
    """What a `train:` section (`TrainSettings`) sets about processes and nodes that cannot work or would not act."""
    world = train.processes * train.nodes
    problems = []
    if train.processes > 1 and train.launcher == "python":
        problems.append("train.processes > 1 needs train.launcher: torchrun (or deepspeed, or slurm)")
    if train.nodes > 1 and train.launcher in ("python", "deepspeed"):
        problems.append("train.nodes > 1 needs train.launcher: torchrun (a gang of `cai worker --queues train`, one "
                        "per node) or slurm (srun in an allocation)")
    if world > 1 and train.deepspeed is None:
        problems.append(f"{world} training processes need train.deepspeed (zero2, zero3 or a config file)")
    if train.deepspeed is not None and world == 1:
        problems.append("train.deepspeed applies only with more than one process (train.processes or train.nodes)")
    across = train.nodes > 1 or train.launcher == "slurm"
    for name in ("rendezvous", "rendezvous_timeout_s"):
        if not across and getattr(train, name) != type(train).model_fields[name].default:
            problems.append(f"train.{name} applies only with train.nodes > 1 (or train.launcher: slurm)")
    if train.slurm_args and train.launcher != "slurm":
        problems.append("train.slurm_args applies only with train.launcher: slurm")
    if train.rendezvous is not None:
        host, _, port = train.rendezvous.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"train.rendezvous must be HOST:PORT, not {train.rendezvous!r}")
    return problems
