"""What GRPO trains on and how its completions are scored: the data record, and the default reward function, the
run's torch-free reward kinds (`rewards`) over each completion.

A reward function takes the step's examples and rollouts (one example per rollout, each prompt's repeated for its
group) and returns, per completion, the total reward (None: it cannot be scored) and its components by
`kind/name`. The builder keeps its construction here, apart from the trainer, so tests inject their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import policies.reward_scoring  # noqa: F401  (registers the "reward_model" kind; torch loads only when built)
from constitution import Constitution, load_constitution
from policies.serving import Conversation
from rewards import RewardComponentSettings, RewardContext, RewardSettings, Scored, TaskSpec, build_scorer

if TYPE_CHECKING:
    from policies.training.rollouts import Rollout
    from policies.training.spec import TrainSpec

RewardScores = list[tuple[float | None, dict[str, float | None]]]
GroupRewardFn = Callable[[Sequence["GRPOExample"], Sequence["Rollout"]], RewardScores]

DEFAULT_REWARDS = RewardSettings(components=[RewardComponentSettings(kind="task")])
"""With no `rewards` in the spec: the verifiable task alone."""

SUPPORTED_KINDS = ("checks", "task", "reward_model")
"""The judge kind needs a judge model served beside the trainer, which a trainer process does not have."""


@dataclass(frozen=True)
class GRPOExample:
    prompt: Conversation
    category: str
    task: TaskSpec | None = None
    principle: str | None = None
    """A principle id of the spec's constitution (what the answer should follow), or None."""


def parse_example(record: Mapping[str, Any]) -> GRPOExample:
    """One data record: {"prompt": [messages], "category": str, "task": {...} | null, "principle": id | null}."""
    if "category" not in record:
        raise ValueError("a GRPO record needs a `category` (the prompt's category: harmful, borderline, benign)")
    task = record.get("task")
    return GRPOExample(record["prompt"], record["category"], TaskSpec.model_validate(task) if task else None,
                       record.get("principle"))


def last_user_text(prompt: Conversation) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _constitution(spec: TrainSpec, settings: RewardSettings) -> Constitution | None:
    kinds = {c.kind for c in settings.components}
    refused = sorted(kinds - set(SUPPORTED_KINDS))
    if refused:
        raise ValueError(f"reward kind {refused[0]!r} is not available to the GRPO trainer: it needs a judge model "
                         f"the trainer does not load (available: {', '.join(SUPPORTED_KINDS)})")
    if "checks" in kinds and spec.constitution is None:
        raise ValueError("reward kind 'checks' needs the spec's `constitution`, whose checks it grades")
    return load_constitution(spec.constitution) if spec.constitution is not None else None


def default_reward_fn(spec: TrainSpec) -> GroupRewardFn:
    """The spec's reward kinds (default: `task` alone) scoring each completion as a `Scored` item: the last user
    message, the completion's text, the record's category, task and principle (looked up in the constitution;
    None without one, which only the judge kind would read)."""
    settings = spec.rewards or DEFAULT_REWARDS
    constitution = _constitution(spec, settings)
    # No kind built here reads the constitution except `checks`, which has one (checked above).
    context = RewardContext(constitution=constitution,  # type: ignore[arg-type]
                            reward_model_dir=spec.reward_model_dir, base_model_dir=spec.model_dir,
                            dtype=spec.dtype, device=spec.device)
    scorer = build_scorer(settings, context)

    def score(examples: Sequence[GRPOExample], rollouts: Sequence[Rollout]) -> RewardScores:
        items = [Scored(prompt=last_user_text(e.prompt), response=r.text, category=e.category, task=e.task,
                        principle=constitution.get(e.principle) if constitution and e.principle else None)
                 for e, r in zip(examples, rollouts, strict=True)]
        return [(reward.total, {f"{c.kind}/{c.name}": c.value for c in reward.components})
                for reward in scorer.score(items)]

    return score
