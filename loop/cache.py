"""Work done once is kept: results that do not depend on the run, stored under `CAI_HOME/cache/KIND/`.

Each entry is one JSON file named by the hash of everything its value depends on, so a change to any part of
the key (a model's files, a labels file, a prompt template, decoding settings) misses and recomputes, and the
same key in any later run or iteration reads the value back. Files are written atomically; a missing, torn or
unreadable entry is a miss, never an error. `cai cache list|clear` shows and clears them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIND = re.compile(r"[a-z0-9][a-z0-9-]*")
FORMAT = 1  # in every key: raised when what a kind's value means changes, so old entries miss


def digest(*parts: Any) -> str:
    """The key of a value computed from `parts` (anything JSON can write)."""
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class CacheKind:
    kind: str
    entries: int
    bytes: int
    newest: float | None  # modification time of the newest entry


class ResultCache:
    def __init__(self, home: Path):
        self.root = Path(home).expanduser() / "cache"

    def _path(self, kind: str, key: str) -> Path:
        if not KIND.fullmatch(kind):
            raise ValueError(f"cache kind {kind!r} is not lowercase letters, digits and dashes")
        return self.root / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> Any | None:
        try:
            return json.loads(self._path(kind, key).read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, kind: str, key: str, value: Any) -> None:
        """Store `value` under (kind, key); a cache that cannot be written (a read-only or full disk) is skipped:
        the value was computed, the run goes on without keeping it."""
        path = self._path(kind, key)
        staging = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A unique staging name: two workers may store the same key at once.
            fd, staging = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"value": value}, handle, ensure_ascii=False)
            os.replace(staging, path)
        except OSError:
            if staging is not None:
                Path(staging).unlink(missing_ok=True)

    def kinds(self) -> list[CacheKind]:
        found = []
        for directory in sorted(p for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []:
            files = [p.stat() for p in directory.glob("*.json")]
            found.append(CacheKind(directory.name, len(files), sum(s.st_size for s in files),
                                   max((s.st_mtime for s in files), default=None)))
        return found

    def clear(self, kind: str | None = None) -> int:
        """Remove one kind's entries (or all); returns how many were removed."""
        if kind is not None:
            self._path(kind, "x")  # the name check: never a folder outside the cache
        targets = [self.root / kind] if kind is not None else [self.root / k.kind for k in self.kinds()]
        removed = 0
        for directory in targets:
            if directory.is_dir():
                removed += sum(1 for _ in directory.glob("*.json"))
                shutil.rmtree(directory)
        return removed
