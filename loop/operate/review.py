"""A person's verdict on a pair (keep, flip or drop), recorded with who and when: `cai review` and the dashboard's
review queue both record through here."""

from __future__ import annotations

from loop.store import Pair, Review, Store

VERDICTS = ("keep", "flip", "drop")


class ReviewError(ValueError):
    """A review that cannot be recorded (an unknown pair or verdict): bad input, nothing is written."""


def record_review(store: Store, pair_id: int, verdict: str, *, reviewer: str, note: str = "") -> Review:
    if verdict not in VERDICTS:
        raise ReviewError(f"unknown verdict {verdict!r}; one of: {', '.join(VERDICTS)}")
    if not reviewer.strip():
        raise ReviewError("a review needs the reviewer's name")
    with store.session() as session:
        if session.get(Pair, pair_id) is None:
            raise ReviewError(f"no pair {pair_id} in this run")
        review = Review(pair_id=pair_id, verdict=verdict, note=note, reviewer=reviewer)
        session.add(review)
        session.flush()
        return review
