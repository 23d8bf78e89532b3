"""What an iteration's results depend on (its constitution and its config), so a resume can tell what changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from constitution import Constitution
from loop.config import RunConfig
from loop.store import ConstitutionVersion, Store

NOT_INPUTS = ("home", "threads", "service", "tracking")
"""Where caches live, how many threads compute, how the daemon shards work and where metrics are also sent: they
change no result, so they may differ on a resume."""


class InputsChanged(ValueError):
    """An unfinished iteration is resumed with another constitution or config."""


def fingerprint(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude=set(NOT_INPUTS))


def config_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ, with both values: `train.preference.beta: 0.1 → 0.2`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def describe_changes(old_constitution: str, new_constitution: str, old_config: dict[str, Any] | None,
                     new_config: dict[str, Any]) -> list[str]:
    changes = []
    if old_constitution != new_constitution:
        changes.append(f"constitution: {old_constitution} → {new_constitution}")
    if old_config is not None:
        changes += [f"config {line}" for line in changed_fields(old_config, new_config)]
    return changes


def record_constitution(store: Store, constitution: Constitution) -> None:
    """Keep the whole constitution under its hash (once), so the dashboard can show and diff every version a run
    used even after its file was edited."""
    with store.session() as session:
        if session.get(ConstitutionVersion, constitution.content_hash) is None:
            session.add(ConstitutionVersion(hash=constitution.content_hash, name=constitution.name,
                                            content=constitution.model_dump(mode="json")))


def recorded_constitution(content: dict[str, Any]) -> Constitution:
    return Constitution.model_validate(content)
