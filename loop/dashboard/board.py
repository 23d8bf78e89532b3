"""What every dashboard route shares: the run folder, its reader and writer, who may change it, and the page
templates. `create_app` makes one `Dashboard` and keeps it on `app.state.dashboard`; routes reach it through
the `Board` dependency, so the router modules hold no state of their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.orm import Session

from loop.dashboard.charts import line_chart, task_accuracy_chart
from loop.dashboard.security import Access, Operator
from loop.store import Store
from loop.store.database import open_run_reader, open_run_store

HERE = Path(__file__).parent


def _templates() -> Jinja2Templates:
    # Every value is escaped: prompts and answers are untrusted text (an answer may hold markup or script).
    templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
    templates.env.globals["chart"] = line_chart
    templates.env.globals["task_chart"] = task_accuracy_chart
    templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f} %"
    # A model given as a local path is shown by its folder name (the full path stays in the API).
    templates.env.filters["model"] = lambda v: Path(v).name if "/" in str(v) else v
    templates.env.filters["when"] = lambda v: v[:19].replace("T", " ") + " UTC" if v else "-"
    templates.env.filters["num"] = lambda v: "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
    return templates


class Dashboard:
    """One run, its reader, and who may change it. A process that already holds the run's store (a daemon, or a
    PostgreSQL store) passes it as `store`: reads and changes then go through it."""

    def __init__(self, run_dir: Path, access: Access, store: Store | None = None):
        self.run_dir = run_dir
        self.access = access
        self.shared = store
        self.reader = store or open_run_reader(run_dir)
        self.templates = _templates()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.reader.session() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Store]:
        if self.shared is not None:
            yield self.shared
            return
        store = open_run_store(self.run_dir, write=True)
        try:
            yield store
        finally:
            store.dispose()

    def page(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        """A template rendered with what every page shows: the operator, read-only mode and the form CSRF token."""
        operator = self.access.operator(request)
        return self.templates.TemplateResponse(request, name, {
            "operator": operator, "read_only": self.access.read_only, "csrf": self.access.csrf_token(operator),
            "run_dir": self.run_dir.name, **context})

    def require_operator(self, request: Request) -> Operator:
        if self.access.read_only:
            raise HTTPException(403, "the dashboard is read-only: start it with a token (CAI_DASHBOARD_TOKEN or "
                                     "--token) to review and control")
        operator = self.access.operator(request)
        if operator is None:
            raise HTTPException(401, "an operator token is needed: `Authorization: Bearer TOKEN`, or log in",
                                headers={"WWW-Authenticate": "Bearer"})
        return operator

    async def form(self, request: Request, operator: Operator) -> dict[str, str]:
        """A posted form's fields, once its CSRF token matches the operator's."""
        fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()}
        if not self.access.csrf_ok(operator, fields.get("csrf", "")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return fields


async def dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard


Board = Annotated[Dashboard, Depends(dashboard)]


def found(value: Any, what: str) -> Any:
    if value is None:
        raise HTTPException(404, f"no {what}")
    return value
