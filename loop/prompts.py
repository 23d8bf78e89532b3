"""Prompt pools: JSONL files of {"id", "prompt", "category"}; a bad line is reported as FILE:LINE."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PromptRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    category: str = "uncategorised"


class PromptFileError(ValueError):
    pass


Record = TypeVar("Record", bound=BaseModel)


def read_jsonl(path: Path, model: type[Record]) -> list[tuple[str, Record]]:
    """(FILE:LINE, record) for each non-empty line; a bad line raises PromptFileError naming FILE:LINE."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            records.append((where, model.model_validate(json.loads(line))))
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: invalid JSON: {exc.msg}") from exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PromptFileError(f"{where}: {problems}") from exc
    return records


def load_prompts(files: Sequence[Path]) -> list[PromptRecord]:
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for path in files:
        for where, record in read_jsonl(path, PromptRecord):
            if record.id in seen:
                raise PromptFileError(f"{where}: duplicate prompt id {record.id!r} (first at {seen[record.id]})")
            seen[record.id] = where
            records.append(record)
    if not records:
        raise PromptFileError(f"no prompts in {', '.join(map(str, files))}")
    return records


def select_prompts(pool: Sequence[PromptRecord], count: int, seed: int, iteration: int) -> list[PromptRecord]:
    """A reproducible draw per (seed, iteration); the whole pool when it is smaller than `count`."""
    digest = hashlib.sha256(f"{seed}:{iteration}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return rng.sample(list(pool), min(count, len(pool)))
