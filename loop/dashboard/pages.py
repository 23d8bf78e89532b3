"""The dashboard's server-rendered pages (GET only; their forms post to `loop.dashboard.actions`). Left out of
the OpenAPI document: the JSON API (`loop.dashboard.api`) serves the same data."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from loop.dashboard import queries
from loop.dashboard.board import Board, found
from loop.dashboard.principles import principles_page

router = APIRouter(include_in_schema=False)


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)  # no icon, and no 404 in the browser's console


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, board: Board):
    with board.read() as session:
        data = queries.overview(session)
    return board.page(request, "overview.html", data=data, nav="overview")


@router.get("/iterations/{index}", response_class=HTMLResponse)
def iteration_view(index: str, request: Request, board: Board):
    with board.read() as session:
        if index == "latest":
            latest = queries.latest_iteration(session)
            if latest is None:
                raise HTTPException(404, "no iteration yet")
            return RedirectResponse(f"/iterations/{latest.index}", status_code=303)
        if not index.isdigit():
            raise HTTPException(404, f"no iteration {index!r}")
        data = found(queries.iteration_page(session, int(index)), f"iteration {index}")
    return board.page(request, "iteration.html", data=data, charts=queries.CHARTS, nav="iteration")


@router.get("/samples", response_class=HTMLResponse)
def samples_view(request: Request, board: Board, iteration: str = "", principle: str = "", category: str = "",
                 verdict: str = "", flag: str = "", offset: int = Query(0, ge=0)):
    filters = queries.SampleFilter(int(iteration) if iteration.isdigit() else None, principle or None,
                                   category or None, verdict or None, flag or None)
    with board.read() as session:
        data = queries.samples(session, filters, offset=offset)
    chosen = {"iteration": iteration, "principle": principle, "category": category, "verdict": verdict,
              "flag": flag}
    more = urlencode({**{k: v for k, v in chosen.items() if v}, "offset": offset + data["limit"]})
    return board.page(request, "samples.html", data=data, chosen=chosen, more=more, nav="samples")


@router.get("/samples/{sample_id}", response_class=HTMLResponse)
def sample_view(sample_id: int, request: Request, board: Board):
    with board.read() as session:
        data = found(queries.sample(session, sample_id), f"sample {sample_id}")
    return board.page(request, "sample.html", s=data, nav="samples")


@router.get("/principles", response_class=HTMLResponse)
def principles_view(request: Request, board: Board):
    with board.read() as session:
        data = principles_page(session)
    return board.page(request, "principles.html", data=data, nav="principles")


@router.get("/review", response_class=HTMLResponse)
def review_view(request: Request, board: Board, iteration: str = "", show: str = "pending"):
    with board.read() as session:
        data = queries.review_queue(session, iteration=int(iteration) if iteration.isdigit() else None,
                                    pending_only=show != "all")
    return board.page(request, "review.html", data=data, show=show, iteration=iteration, nav="review")


@router.get("/controls", response_class=HTMLResponse)
def controls_view(request: Request, board: Board, result: str = ""):
    with board.read() as session:
        data = queries.overview(session)
        requests = queries.control_requests(session)
    return board.page(request, "controls.html", data=data, requests=requests, result=result, nav="controls")


@router.get("/login", response_class=HTMLResponse)
def login_view(request: Request, board: Board, failed: str = ""):
    return board.page(request, "login.html", failed=bool(failed), nav="login")
