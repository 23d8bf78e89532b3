"""The dashboard's JSON API (the same data as the pages, documented at /openapi.json) and `/metrics`. Changes
need the operator token as `Authorization: Bearer TOKEN`; they go through `loop.dashboard.actions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from loop.dashboard import queries
from loop.dashboard.actions import control, review
from loop.dashboard.board import Board, found
from loop.dashboard.principles import principles_page

router = APIRouter()


class ReviewBody(BaseModel):
    verdict: str = Field(description="keep | flip | drop")
    note: str = ""


class ControlBody(BaseModel):
    to: int | None = Field(None, description="promote: the policy version to make current; rollback: optional")
    note: str = ""


@router.get("/api/overview", tags=["read"])
def api_overview(board: Board) -> dict[str, Any]:
    """Runs, the current policy, the daemon's state, open alarms and the latest iteration's summary."""
    with board.read() as session:
        return queries.overview(session)


@router.get("/api/progress", tags=["read"])
def api_progress(board: Board) -> dict[str, Any]:
    """Where the run is now: the stage that runs, those done, who holds the run (poll it)."""
    with board.read() as session:
        return queries.progress(session)


@router.get("/api/iterations/{index}", tags=["read"])
def api_iteration(index: int, board: Board) -> dict[str, Any]:
    """An iteration's summary, stage shards, the charts' series across iterations and its loss curves."""
    with board.read() as session:
        return found(queries.iteration_page(session, index), f"iteration {index}")


@router.get("/api/samples", tags=["read"])
def api_samples(board: Board, iteration: int | None = None, principle: str | None = None,
                category: str | None = None, verdict: str | None = None, flag: str | None = None,
                offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Samples with their whole chain, filtered; `choices` lists the values each filter can take."""
    with board.read() as session:
        return queries.samples(session, queries.SampleFilter(iteration, principle, category, verdict, flag),
                               offset=offset, limit=limit)


@router.get("/api/samples/{sample_id}", tags=["read"])
def api_sample(sample_id: int, board: Board) -> dict[str, Any]:
    with board.read() as session:
        return found(queries.sample(session, sample_id), f"sample {sample_id}")


@router.get("/api/principles", tags=["read"])
def api_principles(board: Board) -> dict[str, Any]:
    """The constitution versions the run used, the diff of the latest against the one before, per-principle
    statistics."""
    with board.read() as session:
        return principles_page(session)


@router.get("/api/reviews", tags=["read"])
def api_reviews(board: Board, iteration: int | None = None, pending: bool = True) -> dict[str, Any]:
    """The review queue: pairs with their AI label and latest review."""
    with board.read() as session:
        return queries.review_queue(session, iteration=iteration, pending_only=pending)


@router.post("/api/reviews/{pair_id}", tags=["change"])
def api_review(pair_id: int, body: ReviewBody, request: Request, board: Board) -> dict[str, Any]:
    """Keep, flip or drop a pair's AI label; recorded with the operator's name and the time."""
    operator = board.require_operator(request)
    return {"pair": pair_id, "verdict": review(board, pair_id, body.verdict, body.note, operator)}


@router.post("/api/control/{action}", tags=["change"])
def api_control(action: str, body: ControlBody, request: Request, board: Board) -> dict[str, Any]:
    """pause | resume | promote | rollback, as `cai ACTION` does it."""
    operator = board.require_operator(request)
    return {"action": action, "result": control(board, action, body.to, body.note, operator)}


@router.get("/metrics", response_class=PlainTextResponse, tags=["read"])
def prometheus(board: Board) -> str:
    """Evaluation metrics and gate outcomes in the Prometheus text format (as `cai metrics`)."""
    from loop.operate.metrics import exposition

    return exposition(board.reader)
