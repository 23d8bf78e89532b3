"""One interface for rewards: a function of a kind scores (prompt, response, category, principle) items into
components, the components of all kinds are combined by weight into one reward, and every component is kept so
that a reward can be traced to the check or model that made it.

Kinds register a factory in REWARD_KINDS: `checks` and `task` here, in `rewards.checks` and `rewards.tasks`
(the package imports both, so `import rewards` registers them); `judge` in `critique.reward_judge` and
`reward_model` in `policies.reward_scoring`, which sit above this package and register themselves when imported
(`loop.rewards` imports them all and builds the scorer a run config asks for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from constitution import Constitution, Principle
from rewards.task_spec import TaskSpec

if TYPE_CHECKING:
    from policies.serving import Generator, Progress
    from rewards.settings import RewardComponentSettings, RewardSettings


@dataclass(frozen=True)
class Scored:
    """What a reward scores: an answer to a prompt of a category, under the principle it was drawn for."""

    prompt: str
    response: str
    category: str
    principle: Principle | None = None
    task: TaskSpec | None = None
    """The prompt's verifiable part (an exact answer, format constraints), which the `task` kind checks."""


@dataclass(frozen=True)
class Component:
    """One number of a reward. A check's component is 1.0 (passed) or 0.0 (failed); a model's lies in [0, 1]."""

    kind: str
    name: str
    value: float | None
    """None: this component cannot score this item (it is left out of the combined reward)."""
    weight: float = 1.0
    """Its share of its kind's configured weight (the scorer sets it; 0 when it could not score)."""


@dataclass(frozen=True)
class Reward:
    total: float | None
    """The weighted mean of the components that scored; None when none did."""
    components: tuple[Component, ...]

    @property
    def passes_checks(self) -> bool:
        """Every check component passed, and there is at least one (an unjudged check does not pass)."""
        checks = [c for c in self.components if c.kind == "checks"]
        return bool(checks) and all(c.value == 1.0 for c in checks)


def combine(components: Sequence[Component]) -> Reward:
    """The weighted mean of the components that scored (value not None, weight > 0); None when none did.

    A check component is 1.0 when the check passed and 0.0 when it failed, so with checks only the total is the
    weighted share of checks passed."""
    scored = [c for c in components if c.value is not None and c.weight > 0]
    weight = sum(c.weight for c in scored)
    total = sum(c.weight * c.value for c in scored) / weight if scored else None  # type: ignore[operator]
    return Reward(total, tuple(components))


class RewardFunction(Protocol):
    kind: str

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[list[Component]]:
        """The components of each item, in item order (batched: a model-backed kind scores all at once). An
        empty list: this kind cannot score the item."""
        ...


@dataclass(frozen=True)
class RewardContext:
    """What reward functions are built from. A kind whose model is missing here refuses to build."""

    constitution: Constitution
    judge: Generator | None = None
    """The judge model (the `judge` kind's yes/no question)."""
    reward_model_dir: Path | None = None
    """A trained reward model's adapter directory (LoRA and scalar head, as `policies.training` writes it)."""
    base_model_dir: Path | None = None
    """The HF model directory the reward model's adapter was trained on."""
    dtype: str = "float32"
    device: str = "auto"


RewardFactory = Callable[["RewardComponentSettings", "RewardSettings", RewardContext], RewardFunction]
"""(the component's settings, the whole reward settings, the context) -> the function."""
REWARD_KINDS: dict[str, RewardFactory] = {}


def register_reward_kind(name: str) -> Callable[[RewardFactory], RewardFactory]:
    def add(factory: RewardFactory) -> RewardFactory:
        if name in REWARD_KINDS:
            raise ValueError(f"reward kind {name!r} is registered twice")
        REWARD_KINDS[name] = factory
        return factory

    return add


def missing_model(kind: str, needs: str) -> ValueError:
    """The error of a kind built without its model."""
    return ValueError(f"reward kind {kind!r} needs {needs}, and none was given")


def _weighted(components: Sequence[Component], weight: float) -> list[Component]:
    """The kind's weight shared equally by its components that scored (those that cannot score get 0)."""
    scored = sum(c.value is not None for c in components)
    return [replace(c, weight=weight / scored if c.value is not None else 0.0) for c in components]


@dataclass(frozen=True)
class RewardScorer:
    """The configured reward functions with their weights."""

    functions: tuple[tuple[RewardFunction, float], ...]

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[Reward]:
        per_item: list[list[Component]] = [[] for _ in items]
        for function, weight in self.functions:
            scores = function.score(items, progress)
            if len(scores) != len(items):
                raise ValueError(f"reward kind {function.kind!r} scored {len(scores)} of {len(items)} items")
            for components, found in zip(per_item, scores, strict=True):
                components += _weighted(found, weight)
        return [combine(components) for components in per_item]


def build_scorer(settings: RewardSettings, context: RewardContext) -> RewardScorer:
    """The scorer of `settings.components`; every kind must be registered (see the module docstring)."""
    functions = []
    for component in settings.components:
        factory = REWARD_KINDS.get(component.kind)
        if factory is None:
            known = ", ".join(sorted(REWARD_KINDS)) or "none"
            raise ValueError(f"reward kind {component.kind!r} is not registered (registered: {known})")
        functions.append((factory(component, settings, context), component.weight))
    return RewardScorer(tuple(functions))
