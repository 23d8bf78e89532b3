"""The principles page: which constitution versions a run used, what changed from one to the next, and how
each principle fared (`queries.principle_stats`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constitution.diff import diff_constitutions
from loop.dashboard.queries import principle_stats
from loop.pipeline.inputs import recorded_constitution
from loop.store import ConstitutionVersion, Iteration
from loop.store.queries import has_table


def _versions(session: Session) -> list[dict[str, Any]]:
    """Each constitution hash in the order the run first used it, with the iterations that used it."""
    versions: dict[str, dict[str, Any]] = {}
    for index, digest in session.execute(select(Iteration.index, Iteration.constitution_hash)
                                         .order_by(Iteration.index)):
        versions.setdefault(digest, {"hash": digest, "iterations": []})["iterations"].append(index)
    return list(versions.values())


def _diff(old, new) -> dict[str, Any]:
    d = diff_constitutions(old, new)

    def change(c) -> dict[str, Any]:
        return {"field": c.field, "old": c.old, "new": c.new}

    return {"old_hash": d.old_hash, "new_hash": d.new_hash, "added": d.added, "removed": d.removed,
            "changed": {pid: [change(c) for c in changes] for pid, changes in d.changed.items()},
            "other": [change(c) for c in d.other], "reordered": d.reordered}


def principles_page(session: Session) -> dict[str, Any]:
    versions = _versions(session)
    recorded = {}
    if has_table(session, ConstitutionVersion.__tablename__):
        recorded = {v.hash: v for v in session.scalars(select(ConstitutionVersion))}
    for version in versions:
        version["recorded"] = version["hash"] in recorded
    current = versions[-1]["hash"] if versions else None
    constitution = recorded_constitution(recorded[current].content) if current in recorded else None
    previous = versions[-2]["hash"] if len(versions) > 1 else None
    diff = None
    if constitution is not None and previous in recorded:
        diff = _diff(recorded_constitution(recorded[previous].content), constitution)
    principles = [] if constitution is None else [
        {"id": p.id, "title": p.title, "tags": list(p.tags), "applies_to": [str(c) for c in p.applies_to],
         "weight": p.weight, "description": p.description} for p in constitution.principles]
    return {"current": current, "name": constitution.name if constitution else None, "previous": previous,
            "versions": versions, "diff": diff, "principles": principles, "stats": principle_stats(session)}
