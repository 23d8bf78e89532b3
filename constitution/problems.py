"""What is wrong with a constitution, where: FILE:LINE:COLUMN: SEVERITY: FIELD: MESSAGE (hint: ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str = ""
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = str(self.path)
        if self.line:
            where += f":{self.line}" + (f":{self.column}" if self.column else "")
        text = f"{where}: {self.severity}: " + (f"{self.field}: " if self.field else "") + self.message
        return text + (f" (hint: {self.hint})" if self.hint else "")


class ConstitutionError(ValueError):
    """A constitution that cannot be used; `problems` lists each error with its place."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
