"""Reference log-probs kept across a run's trainer runs. The reference is the base model (the adapter disabled), so
a pair's reference log-probs depend only on the base's files, its dtype, device and compute precision, and the
pair's tokens: a pair trained again in a later iteration (a replay) is not scored again.

One small JSON file per pair, named by the hash of all of that, written atomically by rank 0; a missing, torn or
unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from policies.files import atomic_write_text, model_fingerprint
from policies.training.data import EncodedPair


class ReferenceCache:
    def __init__(self, folder: Path, model_dir: Path, dtype: str, device: str, precision: str):
        self.folder = folder
        self.model = [model_fingerprint(model_dir), dtype, device, precision]

    def _path(self, pair: EncodedPair) -> Path:
        key = json.dumps([self.model, pair.prompt, pair.chosen, pair.rejected])
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def get(self, pairs: list[EncodedPair]) -> dict[int, tuple[float, float]]:
        """index → (chosen, rejected) log-probs, for the pairs whose entry is there."""
        found = {}
        for index, pair in enumerate(pairs):
            try:
                entry = json.loads(self._path(pair).read_text())
                found[index] = (float(entry["chosen"]), float(entry["rejected"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def put(self, pairs: list[EncodedPair], values: dict[int, tuple[float, float]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, (chosen, rejected) in values.items():
            atomic_write_text(self._path(pairs[index]), json.dumps({"chosen": chosen, "rejected": rejected}))
