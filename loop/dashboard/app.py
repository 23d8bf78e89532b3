"""The operator dashboard: server-rendered pages and a JSON API over one run's store.

Reads go through a read-only store that opens a fresh connection per request (it sees a running iteration's
commits and never writes); a review or a control opens the run for writing only for that one change, through
the same functions the CLI uses (`loop.operate.review`, `loop.operate.control`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.middleware.trustedhost import TrustedHostMiddleware

from loop.dashboard import queries
from loop.dashboard.charts import line_chart
from loop.dashboard.principles import principles_page
from loop.dashboard.security import HEADERS, MAX_NAME, SESSION_COOKIE, Access, Operator
from loop.store import Store
from loop.store.database import open_run_reader, open_run_store

HERE = Path(__file__).parent
CONTROL_ACTIONS = ("pause", "resume", "promote", "rollback")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class ReviewBody(BaseModel):
    verdict: str = Field(description="keep | flip | drop")
    note: str = ""


class ControlBody(BaseModel):
    to: int | None = Field(None, description="promote: the policy version to make current; rollback: optional")
    note: str = ""


class Dashboard:
    """One run, its reader, and who may change it. A process that already holds the run's store (a daemon, or a
    PostgreSQL store) passes it as `store`: reads and changes then go through it."""

    def __init__(self, run_dir: Path, access: Access, store: Store | None = None):
        self.run_dir = run_dir
        self.access = access
        self.shared = store
        self.reader = store or open_run_reader(run_dir)

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


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise HTTPException(404, f"no {what}")
    return value


def _version(text: str) -> int | None:
    text = text.strip().removeprefix("v")
    if not text:
        return None
    if not text.isdigit():
        raise HTTPException(400, f"not a policy version: {text!r} (expected N or vN)")
    return int(text)


def create_app(run_dir: Path, *, token: str | None = None, store: Store | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The dashboard of the run in `run_dir`; with `token`, operators who present it may review and control.
    Without `store` it opens the run folder's SQLite database itself (read-only, and for each change).
    `allowed_hosts` limits the Host header (a page on another site cannot reach a local dashboard by DNS
    rebinding)."""
    board = Dashboard(run_dir, Access(token), store)
    access = board.access
    # FastAPI's own /docs pages load their scripts from a CDN: only the OpenAPI document is served.
    app = FastAPI(title="cai dashboard", docs_url=None, redoc_url=None,
                  description="The operator dashboard's JSON API: the same data as the pages. Changes need "
                              "`Authorization: Bearer TOKEN` (and optionally `X-CAI-Operator: NAME`).")
    app.state.dashboard = board
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # Every value is escaped: prompts and answers are untrusted text (an answer may hold markup or script).
    templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
    templates.env.globals["chart"] = line_chart
    templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f} %"
    # A model given as a local path is shown by its folder name (the full path stays in the API).
    templates.env.filters["model"] = lambda v: Path(v).name if "/" in str(v) else v
    templates.env.filters["when"] = lambda v: v[:19].replace("T", " ") + " UTC" if v else "-"
    templates.env.filters["num"] = lambda v: "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable):
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        operator = access.operator(request)
        return templates.TemplateResponse(request, name, {
            "operator": operator, "read_only": access.read_only, "csrf": access.csrf_token(operator),
            "run_dir": board.run_dir.name, **context})

    def require_operator(request: Request) -> Operator:
        if access.read_only:
            raise HTTPException(403, "the dashboard is read-only: start it with a token (CAI_DASHBOARD_TOKEN or "
                                     "--token) to review and control")
        operator = access.operator(request)
        if operator is None:
            raise HTTPException(401, "an operator token is needed: `Authorization: Bearer TOKEN`, or log in",
                                headers={"WWW-Authenticate": "Bearer"})
        return operator

    async def form(request: Request, operator: Operator) -> dict[str, str]:
        fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode(), keep_blank_values=True).items()}
        if not access.csrf_ok(operator, fields.get("csrf", "")):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return fields

    # --- JSON API -------------------------------------------------------------------------------------------

    @app.get("/api/overview", tags=["read"])
    def api_overview() -> dict[str, Any]:
        """Runs, the current policy, the daemon's state, open alarms and the latest iteration's summary."""
        with board.read() as session:
            return queries.overview(session)

    @app.get("/api/progress", tags=["read"])
    def api_progress() -> dict[str, Any]:
        """Where the run is now: the stage that runs, those done, who holds the run (poll it)."""
        with board.read() as session:
            return queries.progress(session)

    @app.get("/api/iterations/{index}", tags=["read"])
    def api_iteration(index: int) -> dict[str, Any]:
        """An iteration's summary, stage shards, the charts' series across iterations and its loss curves."""
        with board.read() as session:
            return _found(queries.iteration_page(session, index), f"iteration {index}")

    @app.get("/api/samples", tags=["read"])
    def api_samples(iteration: int | None = None, principle: str | None = None, category: str | None = None,
                    verdict: str | None = None, flag: str | None = None, offset: int = Query(0, ge=0),
                    limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        """Samples with their whole chain, filtered; `choices` lists the values each filter can take."""
        with board.read() as session:
            return queries.samples(session, queries.SampleFilter(iteration, principle, category, verdict, flag),
                                   offset=offset, limit=limit)

    @app.get("/api/samples/{sample_id}", tags=["read"])
    def api_sample(sample_id: int) -> dict[str, Any]:
        with board.read() as session:
            return _found(queries.sample(session, sample_id), f"sample {sample_id}")

    @app.get("/api/principles", tags=["read"])
    def api_principles() -> dict[str, Any]:
        """The constitution versions the run used, the diff of the latest against the one before, per-principle
        statistics."""
        with board.read() as session:
            return principles_page(session)

    @app.get("/api/reviews", tags=["read"])
    def api_reviews(iteration: int | None = None, pending: bool = True) -> dict[str, Any]:
        """The review queue: pairs with their AI label and latest review."""
        with board.read() as session:
            return queries.review_queue(session, iteration=iteration, pending_only=pending)

    @app.post("/api/reviews/{pair_id}", tags=["change"])
    def api_review(pair_id: int, body: ReviewBody, request: Request) -> dict[str, Any]:
        """Keep, flip or drop a pair's AI label; recorded with the operator's name and the time."""
        operator = require_operator(request)
        return {"pair": pair_id, "verdict": _review(pair_id, body.verdict, body.note, operator)}

    @app.post("/api/control/{action}", tags=["change"])
    def api_control(action: str, body: ControlBody, request: Request) -> dict[str, Any]:
        """pause | resume | promote | rollback, as `cai ACTION` does it."""
        operator = require_operator(request)
        return {"action": action, "result": _control(action, body.to, body.note, operator)}

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # no icon, and no 404 in the browser's console

    @app.get("/metrics", response_class=PlainTextResponse, tags=["read"])
    def prometheus() -> str:
        """Evaluation metrics and gate outcomes in the Prometheus text format (as `cai metrics`)."""
        from loop.operate.metrics import exposition

        return exposition(board.reader)

    def _review(pair_id: int, verdict: str, note: str, operator: Operator) -> str:
        from loop.operate.review import ReviewError, record_review

        with board.write() as store:
            try:
                return record_review(store, pair_id, verdict, reviewer=operator.name, note=note).verdict
            except ReviewError as exc:
                raise HTTPException(400, str(exc)) from exc

    def _control(action: str, to: int | None, note: str, operator: Operator) -> str:
        from loop.operate.control import ControlError, operate

        if action not in CONTROL_ACTIONS:
            raise HTTPException(404, f"unknown control {action!r}; one of: {', '.join(CONTROL_ACTIONS)}")
        with board.write() as store:
            try:
                return operate(store, action, by=operator.name, note=note, to=to)
            except ControlError as exc:
                raise HTTPException(400, str(exc)) from exc

    # --- pages ----------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request):
        with board.read() as session:
            data = queries.overview(session)
        return page(request, "overview.html", data=data, nav="overview")

    @app.get("/iterations/{index}", response_class=HTMLResponse, include_in_schema=False)
    def iteration_view(index: str, request: Request):
        with board.read() as session:
            if index == "latest":
                latest = queries.latest_iteration(session)
                if latest is None:
                    raise HTTPException(404, "no iteration yet")
                return RedirectResponse(f"/iterations/{latest.index}", status_code=303)
            if not index.isdigit():
                raise HTTPException(404, f"no iteration {index!r}")
            data = _found(queries.iteration_page(session, int(index)), f"iteration {index}")
        return page(request, "iteration.html", data=data, charts=queries.CHARTS, nav="iteration")

    @app.get("/samples", response_class=HTMLResponse, include_in_schema=False)
    def samples_view(request: Request, iteration: str = "", principle: str = "", category: str = "",
                     verdict: str = "", flag: str = "", offset: int = Query(0, ge=0)):
        filters = queries.SampleFilter(int(iteration) if iteration.isdigit() else None, principle or None,
                                       category or None, verdict or None, flag or None)
        with board.read() as session:
            data = queries.samples(session, filters, offset=offset)
        chosen = {"iteration": iteration, "principle": principle, "category": category, "verdict": verdict,
                  "flag": flag}
        more = urlencode({**{k: v for k, v in chosen.items() if v}, "offset": offset + data["limit"]})
        return page(request, "samples.html", data=data, chosen=chosen, more=more, nav="samples")

    @app.get("/samples/{sample_id}", response_class=HTMLResponse, include_in_schema=False)
    def sample_view(sample_id: int, request: Request):
        with board.read() as session:
            data = _found(queries.sample(session, sample_id), f"sample {sample_id}")
        return page(request, "sample.html", s=data, nav="samples")

    @app.get("/principles", response_class=HTMLResponse, include_in_schema=False)
    def principles_view(request: Request):
        with board.read() as session:
            data = principles_page(session)
        return page(request, "principles.html", data=data, nav="principles")

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_view(request: Request, iteration: str = "", show: str = "pending"):
        with board.read() as session:
            data = queries.review_queue(session, iteration=int(iteration) if iteration.isdigit() else None,
                                        pending_only=show != "all")
        return page(request, "review.html", data=data, show=show, iteration=iteration, nav="review")

    @app.post("/review/{pair_id}", include_in_schema=False)
    async def review_post(pair_id: int, request: Request):
        operator = require_operator(request)
        fields = await form(request, operator)
        _review(pair_id, fields.get("verdict", ""), fields.get("note", ""), operator)
        back = fields.get("back", "")
        return RedirectResponse(back if back.startswith("/") and not back.startswith("//") else "/review",
                                status_code=303)

    @app.get("/controls", response_class=HTMLResponse, include_in_schema=False)
    def controls_view(request: Request, result: str = ""):
        with board.read() as session:
            data = queries.overview(session)
            requests = queries.control_requests(session)
        return page(request, "controls.html", data=data, requests=requests, result=result, nav="controls")

    @app.post("/controls/{action}", include_in_schema=False)
    async def control_post(action: str, request: Request):
        operator = require_operator(request)
        fields = await form(request, operator)
        try:
            result = _control(action, _version(fields.get("to", "")), fields.get("note", ""), operator)
        except HTTPException as exc:
            if exc.status_code != 400:
                raise
            result = f"refused: {exc.detail}"  # shown on the page the operator acted from
        return RedirectResponse("/controls?" + urlencode({"result": result}), status_code=303)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_view(request: Request, failed: str = ""):
        return page(request, "login.html", failed=bool(failed), nav="login")

    @app.post("/login", include_in_schema=False)
    async def login_post(request: Request):
        # No CSRF token here: logging in needs the operator token itself, which another site cannot know.
        fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        name = fields.get("name", "").strip()[:MAX_NAME]
        if access.read_only or not name or not access.token_matches(fields.get("token", "")):
            return RedirectResponse("/login?failed=1", status_code=303)
        response = RedirectResponse("/controls", status_code=303)
        response.set_cookie(SESSION_COOKIE, access.session_cookie(name), httponly=True, samesite="strict")
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout_post(request: Request):
        operator = access.operator(request)
        if operator is not None:
            await form(request, operator)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        response = page(request, "error.html", status=exc.status_code, detail=exc.detail, nav="")
        response.status_code = exc.status_code
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    return app
