"""What changed between two resolved constitutions, principle by principle, and whether the hash moves."""

from __future__ import annotations

from dataclasses import dataclass

from constitution.schema import Constitution, canonical_form


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: object
    new: object


@dataclass(frozen=True)
class ConstitutionDiff:
    old_hash: str
    new_hash: str
    added: list[str]
    removed: list[str]
    changed: dict[str, list[FieldChange]]
    """Principle id -> its changed fields (as the hash sees them)."""
    other: list[FieldChange]
    """Changes outside the principles: name, description, snippets."""
    reordered: bool
    """The same ids in another order: sampling draws change, so the hash does too."""

    @property
    def hash_changes(self) -> bool:
        return self.old_hash != self.new_hash


def diff_constitutions(old: Constitution, new: Constitution) -> ConstitutionDiff:
    old_form, new_form = canonical_form(old), canonical_form(new)
    old_by_id = {p["id"]: p for p in old_form.pop("principles")}  # type: ignore[attr-defined]
    new_by_id = {p["id"]: p for p in new_form.pop("principles")}  # type: ignore[attr-defined]
    changed = {}
    for pid in old_by_id.keys() & new_by_id.keys():
        fields = _changes(old_by_id[pid], new_by_id[pid])
        if fields:
            changed[pid] = fields
    kept_old = [pid for pid in old_by_id if pid in new_by_id]
    kept_new = [pid for pid in new_by_id if pid in old_by_id]
    return ConstitutionDiff(
        old_hash=old.content_hash, new_hash=new.content_hash,
        added=[pid for pid in new_by_id if pid not in old_by_id],
        removed=[pid for pid in old_by_id if pid not in new_by_id],
        changed={pid: changed[pid] for pid in kept_new if pid in changed},
        other=_changes(old_form, new_form), reordered=kept_old != kept_new)


def _changes(old: dict[str, object], new: dict[str, object]) -> list[FieldChange]:
    return [FieldChange(key, old.get(key), new.get(key))
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
