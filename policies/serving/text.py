"""What untrusted text (prompt pools, eval sets, labels, judge sets) may hold before any of it reaches a model:
a length far beyond any context, and no control characters but tab and line breaks. Torch-free."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_TEXT_CHARS = 32_000
"""The longest prompt or answer a record may hold: far beyond any context here (SmolLM2: 8k tokens), so a longer
one is a damaged file, refused at its line rather than fed to a model."""
CONTROL_CHARACTERS = frozenset(chr(c) for c in [*range(0x20), 0x7F]) - {"\t", "\n", "\r"}


def plain_text(text: str) -> str:
    """Text as people write it: no control characters but tab and line breaks (a NUL or an escape sequence in
    a prompt is a damaged or hostile file, never a request)."""
    for index, char in enumerate(text):
        if char in CONTROL_CHARACTERS:
            raise ValueError(f"control character U+{ord(char):04X} at character {index + 1} (only tabs and line "
                             "breaks may appear in text)")
    return text


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(plain_text)]
"""A field of untrusted text in a record schema."""
