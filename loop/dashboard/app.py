"""The operator dashboard: server-rendered pages and a JSON API over one run's store.

Reads go through a read-only store that opens a fresh connection per request (it sees a running iteration's
commits and never writes); a review or a control opens the run for writing only for that one change, through
the same functions the CLI uses (`loop.operate.review`, `loop.operate.control`). The routes live in routers
(`pages`, `api`, `actions`); what they share is the `Dashboard` on `app.state` (`loop.dashboard.board`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from loop.dashboard import actions, api, pages
from loop.dashboard.board import HERE, Dashboard
from loop.dashboard.security import HEADERS, Access
from loop.store import Store

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


async def _security_headers(request: Request, call_next: Callable) -> Response:
    response = await call_next(request)
    response.headers.update(HEADERS)
    return response


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """JSON for the API and for clients that do not ask for HTML; the error page for a browser."""
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    board: Dashboard = request.app.state.dashboard
    response = board.page(request, "error.html", status=exc.status_code, detail=exc.detail, nav="")
    response.status_code = exc.status_code
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def create_app(run_dir: Path, *, token: str | None = None, store: Store | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The dashboard of the run in `run_dir`; with `token`, operators who present it may review and control.
    Without `store` it opens the run folder's SQLite database itself (read-only, and for each change).
    `allowed_hosts` limits the Host header (a page on another site cannot reach a local dashboard by DNS
    rebinding)."""
    board = Dashboard(run_dir, Access(token), store)
    # FastAPI's own /docs pages load their scripts from a CDN: only the OpenAPI document is served.
    app = FastAPI(title="cai dashboard", docs_url=None, redoc_url=None,
                  description="The operator dashboard's JSON API: the same data as the pages. Changes need "
                              "`Authorization: Bearer TOKEN` (and optionally `X-CAI-Operator: NAME`).")
    app.state.dashboard = board
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.middleware("http")(_security_headers)  # added last, so outermost: even a refused Host gets the headers
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.add_exception_handler(HTTPException, _http_error)
    return app
