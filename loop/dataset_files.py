"""Prompt files in their own shapes: JSONL, CSV, parquet and folders saved by Hugging Face `datasets`, read as rows
and mapped onto the fields of cai's prompt records (`loop.prompts`). The prompt pools and the eval sets both read
through here, so a bad row is reported the same way: FILE:LINE for JSONL, FILE:row N for the other formats."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, field_validator, model_validator

from policies.files import NotUtf8Error, read_utf8

Format = Literal["jsonl", "csv", "parquet", "datasets"]
RecordField = Literal["id", "prompt", "category", "twin"]
SUFFIX_FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
HH_COLUMN = "chosen"
"""The column an HH-RLHF transcript is read from unless `columns.prompt` names another (`rejected`)."""


class PromptFileError(ValueError):
    """A prompt file that cannot be read, or a row that is not a record: the message starts with where."""


class DatasetFile(BaseModel):
    """A prompt file in its own shape: which of its columns hold the record's fields, and its categories in cai's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    format: Format | None = None
    """Inferred when omitted: a folder is a `datasets` one, .csv and .parquet go by the suffix, the rest is JSONL."""
    columns: dict[RecordField, str] = {}
    """The file's column of each record field, e.g. {prompt: question, category: type}; a field left out is read
    from the column of its own name. Without an id column the ids are FILE-STEM-ROW."""
    prompt_from: Literal["column", "hh_transcript"] = "column"
    """hh_transcript: the prompt is the first Human turn of an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant:
    ...") held in columns.prompt (default: chosen)."""
    categories: dict[str, str] | None = None
    """The file's category values -> cai's categories (harmful, borderline, benign, ...); an unlisted value is an
    error, so no row lands in a category by accident."""
    category: str | None = None
    """One category for every row, for a file without a category column."""

    @field_validator("categories", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads keys like `0:` or `true:` as numbers and booleans; rows are matched on their text.
        return {str(key): target for key, target in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_source_of_category(self) -> DatasetFile:
        if self.category is not None and (self.categories is not None or "category" in self.columns):
            raise ValueError("`category` gives every row one category: drop it, or drop columns.category and "
                             "`categories`")
        return self

    @property
    def file_format(self) -> Format:
        if self.format is not None:
            return self.format
        if self.path.is_dir():
            return "datasets"
        return SUFFIX_FORMATS.get(self.path.suffix.lower(), "jsonl")


PromptFile = Annotated[Annotated[Path, Tag("path")] | Annotated[DatasetFile, Tag("mapping")],
                       Discriminator(lambda v: "mapping" if isinstance(v, dict | DatasetFile) else "path")]
"""A prompt file in a config: a plain path (cai's own shape, in any format) or a `DatasetFile` mapping."""


def path_of(entry: PromptFile) -> Path:
    return entry.path if isinstance(entry, DatasetFile) else entry


def with_path(entry: PromptFile, move: Callable[[Path], Path]) -> PromptFile:
    """The entry with its path passed through `move` (made absolute against the config's folder)."""
    return entry.model_copy(update={"path": move(entry.path)}) if isinstance(entry, DatasetFile) else move(entry)


def jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    """(FILE:LINE, the parsed line) for each non-empty line; a line that is not JSON raises naming FILE:LINE."""
    try:
        lines = read_utf8(path).splitlines()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except NotUtf8Error as exc:
        raise PromptFileError(str(exc)) from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{number}: invalid JSON at column {exc.colno}: {exc.msg}") from exc
    return rows


def _saved_dataset(path: Path):
    """The table of a `Dataset.save_to_disk` folder, read with pyarrow alone: its arrow files are IPC streams."""
    import pyarrow as pa

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        raise PromptFileError(f"{path}: a DatasetDict folder: name one split's folder ({', '.join(splits)})")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tables = []
    for data_file in state["_data_files"]:
        with pa.memory_map(str(path / data_file["filename"])) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables)


def _table_rows(path: Path, file_format: Format) -> tuple[list[tuple[str, Any]], list[str]]:
    """(FILE:row N, row) for each row of a CSV, parquet or `datasets` file, and the file's column names."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if file_format == "csv":
            table = pa.csv.read_csv(path, convert_options=pa.csv.ConvertOptions(strings_can_be_null=True))
            # Every cell as text, as it is in the file: an id column of numbers is still ids.
            table = table.cast(pa.schema([pa.field(name, pa.string()) for name in table.column_names]))
        elif file_format == "parquet":
            table = pa.parquet.read_table(path)
        else:
            table = _saved_dataset(path)
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (pa.ArrowException, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{path}: cannot read as {file_format}: {exc}") from exc
    rows = [(f"{path}:row {number}", row) for number, row in enumerate(table.to_pylist(), start=1)]
    return rows, table.column_names


def _check_columns(source: DatasetFile, columns: list[str]) -> None:
    needed = {f"columns.{field}": column for field, column in source.columns.items()}
    if source.categories is not None and "category" not in source.columns:
        needed["categories"] = "category"
    if source.prompt_from == "hh_transcript" and "prompt" not in source.columns:
        needed["prompt_from"] = HH_COLUMN
    for key, column in needed.items():
        if column not in columns:
            raise PromptFileError(f"{source.path}: {key}: no column {column!r} (the file has: "
                                  f"{', '.join(columns) or 'none'})")


def first_human_turn(text: Any) -> str | None:
    """The first Human turn of an HH-RLHF transcript, or None when `text` is not one."""
    if not isinstance(text, str) or not text.lstrip().startswith("Human:"):
        return None
    return text.lstrip().removeprefix("Human:").split("\n\nAssistant:", 1)[0].strip()


def _record_fields(source: DatasetFile, where: str, row: Any, row_id: str | None) -> Any:
    """The record fields of one row: mapped columns, the HH prompt, the category in cai's terms, nulls left out."""
    if not isinstance(row, dict):
        return row  # the record's validation says what is wrong with it
    data = {**row, **{field: row.get(column) for field, column in source.columns.items()}}
    if source.prompt_from == "hh_transcript":
        column = source.columns.get("prompt", HH_COLUMN)
        data["prompt"] = first_human_turn(row.get(column))
        if data["prompt"] is None:
            raise PromptFileError(f"{where}: {column}: not an HH-RLHF transcript (it does not open with 'Human:')")
    if source.category is not None:
        data["category"] = source.category
    elif source.categories is not None:
        value = data.get("category")
        if str(value) not in source.categories:
            raise PromptFileError(f"{where}: {source.columns.get('category', 'category')}: {value!r} is not in "
                                  f"categories (its keys: {', '.join(source.categories)})")
        data["category"] = source.categories[str(value)]
    if row_id is not None:
        data["id"] = row_id
    for field in ("id", "twin"):  # numeric ids (parquet, datasets) name records as text
        if isinstance(data.get(field), int) and not isinstance(data[field], bool):
            data[field] = str(data[field])
    return {key: value for key, value in data.items() if value is not None}


def read_rows(entry: PromptFile) -> list[tuple[str, Any]]:
    """(where, the record fields) for each row of a prompt file, mapped as its entry says; raises PromptFileError
    naming the file, and the row and column when one is wrong."""
    source = entry if isinstance(entry, DatasetFile) else DatasetFile(path=entry)
    if source.file_format == "jsonl":
        rows = jsonl_rows(source.path)
        columns = list(dict.fromkeys(key for _, row in rows if isinstance(row, dict) for key in row))
    else:
        rows, columns = _table_rows(source.path, source.file_format)
    _check_columns(source, columns)
    numbered = "id" not in source.columns and "id" not in columns
    return [(where, _record_fields(source, where, row, f"{source.path.stem}-{number}" if numbered else None))
            for number, (where, row) in enumerate(rows, start=1)]
