"""The dashboard's changes: a review or a control, through the same functions the CLI uses
(`loop.operate.review`, `loop.operate.control`), and the form posts that make them from the pages (login, logout,
review, control). The JSON API's change routes (`loop.dashboard.api`) call `review` and `control` too."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse

from loop.dashboard.board import Board, Dashboard
from loop.dashboard.security import MAX_NAME, SESSION_COOKIE, Operator

CONTROL_ACTIONS = ("pause", "resume", "promote", "rollback")

router = APIRouter(include_in_schema=False)


def review(board: Dashboard, pair_id: int, verdict: str, note: str, operator: Operator) -> str:
    from loop.operate.review import ReviewError, record_review

    with board.write() as store:
        try:
            return record_review(store, pair_id, verdict, reviewer=operator.name, note=note).verdict
        except ReviewError as exc:
            raise HTTPException(400, str(exc)) from exc


def control(board: Dashboard, action: str, to: int | None, note: str, operator: Operator) -> str:
    from loop.operate.control import ControlError, operate

    if action not in CONTROL_ACTIONS:
        raise HTTPException(404, f"unknown control {action!r}; one of: {', '.join(CONTROL_ACTIONS)}")
    with board.write() as store:
        try:
            return operate(store, action, by=operator.name, note=note, to=to)
        except ControlError as exc:
            raise HTTPException(400, str(exc)) from exc


def _version(text: str) -> int | None:
    text = text.strip().removeprefix("v")
    if not text:
        return None
    if not text.isdigit():
        raise HTTPException(400, f"not a policy version: {text!r} (expected N or vN)")
    return int(text)


@router.post("/review/{pair_id}")
async def review_post(pair_id: int, request: Request, board: Board):
    operator = board.require_operator(request)
    fields = await board.form(request, operator)
    review(board, pair_id, fields.get("verdict", ""), fields.get("note", ""), operator)
    back = fields.get("back", "")
    return RedirectResponse(back if back.startswith("/") and not back.startswith("//") else "/review",
                            status_code=303)


@router.post("/controls/{action}")
async def control_post(action: str, request: Request, board: Board):
    operator = board.require_operator(request)
    fields = await board.form(request, operator)
    try:
        result = control(board, action, _version(fields.get("to", "")), fields.get("note", ""), operator)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        result = f"refused: {exc.detail}"  # shown on the page the operator acted from
    return RedirectResponse("/controls?" + urlencode({"result": result}), status_code=303)


@router.post("/login")
async def login_post(request: Request, board: Board):
    # No CSRF token here: logging in needs the operator token itself, which another site cannot know.
    fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
    name = fields.get("name", "").strip()[:MAX_NAME]
    access = board.access
    if access.read_only or not name or not access.token_matches(fields.get("token", "")):
        return RedirectResponse("/login?failed=1", status_code=303)
    response = RedirectResponse("/controls", status_code=303)
    response.set_cookie(SESSION_COOKIE, access.session_cookie(name), httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout_post(request: Request, board: Board):
    operator = board.access.operator(request)
    if operator is not None:
        await board.form(request, operator)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
