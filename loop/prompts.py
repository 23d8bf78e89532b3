"""Prompt pools: files of {"id", "prompt", "category"} records (and optionally "twin", "task"), in JSONL or, mapped
by `loop.dataset_files`, CSV, parquet and `datasets` folders; a bad line is reported as FILE:LINE (FILE:row N)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loop.dataset_files import PromptFile, PromptFileError, jsonl_rows, path_of, read_rows
from policies.serving.text import Text
from rewards.task_spec import TaskSpec


class PromptRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    prompt: Annotated[Text, Field(min_length=1)]
    category: str = "uncategorised"
    twin: str | None = None
    """The id of a look-alike prompt of another category (a benign-but-risky request's harmful twin)."""
    task: TaskSpec | None = None
    """What a response can be checked against exactly (the `task` reward kind): an answer, format constraints."""


Record = TypeVar("Record", bound=BaseModel)


def validated(where: str, model: type[Record], data: object) -> Record:
    """One row as a record; a bad one raises PromptFileError naming where it is and each wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise PromptFileError(f"{where}: {problems}") from exc


def read_jsonl(path: Path, model: type[Record]) -> list[tuple[str, Record]]:
    """(FILE:LINE, record) for each non-empty line; a bad line raises PromptFileError naming FILE:LINE."""
    return [(where, validated(where, model, row)) for where, row in jsonl_rows(path)]


def load_prompts(files: Sequence[PromptFile]) -> list[PromptRecord]:
    """The records of prompt files (plain paths or `DatasetFile` mappings); ids are unique across them."""
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for entry in files:
        for where, fields in read_rows(entry):
            record = validated(where, PromptRecord, fields)
            if record.id in seen:
                raise PromptFileError(f"{where}: duplicate prompt id {record.id!r} (first at {seen[record.id]})")
            seen[record.id] = where
            records.append(record)
    if not records:
        raise PromptFileError(f"no prompts in {', '.join(str(path_of(entry)) for entry in files)}")
    return records


def select_prompts(pool: Sequence[PromptRecord], count: int, seed: int, iteration: int,
                   draw: str = "random") -> list[PromptRecord]:
    """A reproducible draw per (seed, iteration); the whole pool when it is smaller than `count`.

    `draw="twins"`: prompts that have a twin in the pool come with it (count // 2 of them and their twins), so
    the iteration sees each boundary from both sides; the rest of the count, if any, is drawn at random from
    the prompts outside any twin pair.
    """
    digest = hashlib.sha256(f"{seed}:{iteration}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    if draw == "random" or count >= len(pool):
        return rng.sample(list(pool), min(count, len(pool)))
    by_id = {record.id: record for record in pool}
    twinned = [record for record in pool if record.twin in by_id and record.twin != record.id]
    chosen: dict[str, PromptRecord] = {}
    for record in rng.sample(twinned, len(twinned)):
        if len(chosen) + 2 > count:
            break
        if record.id not in chosen and record.twin not in chosen:
            chosen[record.id], chosen[record.twin] = record, by_id[record.twin]
    # The rest comes from prompts outside any twin pair, so no twin is drawn without its look-alike (unless
    # the pool has too few of them).
    paired = {record.id for record in twinned} | {record.twin for record in twinned}
    single = [record for record in pool if record.id not in paired]
    needed = count - len(chosen)
    if needed <= len(single):
        return [*chosen.values(), *rng.sample(single, needed)]
    others = [record for record in pool if record.id in paired and record.id not in chosen]
    return [*chosen.values(), *single, *rng.sample(others, needed - len(single))]
