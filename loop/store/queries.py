"""The selects more than one room asks, named once: each takes an open `Session` and returns rows or None.

A database holds one run (`run_row`); a query asked in one place only stays beside its caller.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session


def count(session: Session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0
