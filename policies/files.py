"""Crash-safe writes of whole directories (converted models, adapters, checkpoints)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside `target`; on success it is fsynced and renamed onto `target`.

    Readers see either the old directory or the complete new one, never half of it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.exists():  # left by an interrupted or superseded earlier write
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the whole new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


class NotUtf8Error(ValueError):
    """A text file with bytes that are not UTF-8; the message names FILE:LINE:COLUMN and the byte."""


def read_utf8(path: Path) -> str:
    """A text file's content; bytes that are not UTF-8 raise NotUtf8Error at their line and column, so a user can
    find them (Python's own error gives an offset into the whole file)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise NotUtf8Error(f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason}); "
                           "save the file as UTF-8") from None


def model_fingerprint(model_dir: Path) -> str:
    """A model directory's identity: each file's name, size and modification time (not its bytes: hashing a
    model's weights would cost seconds per load). Rewriting a file in place changes its time, so it misses."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    stats = [[str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()
