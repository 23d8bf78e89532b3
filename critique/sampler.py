"""Label hygiene and the preference sampler: which labelled pairs an iteration trains on.

Every pair that is not kept is counted under one reason, so an iteration's summary can say where its
candidates went.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from critique.injection import is_injection


@dataclass(frozen=True)
class Candidate:
    """A labelled pair before sampling."""

    prompt: str
    chosen: str
    rejected: str
    target: float
    """Soft label: the probability that `chosen` is better (>= 0.5)."""
    principle_id: str
    source: str
    ref: object = None
    """Whatever the caller needs to store the pair (a sample or comparison id)."""

    @property
    def confidence(self) -> float:
        return abs(self.target - 0.5)

    @property
    def key(self) -> str:
        return pair_key(self.prompt, self.chosen, self.rejected)

    @property
    def length_difference(self) -> int:
        return len(self.chosen) - len(self.rejected)


def pair_key(prompt: str, chosen: str, rejected: str) -> str:
    """The identity of a pair across iterations: the same texts (whitespace and case aside) are one pair."""
    canonical = "\x1f".join(" ".join(t.split()).lower() for t in (prompt, chosen, rejected))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def clamp(p: float, label_range: tuple[float, float]) -> float:
    low, high = label_range
    return min(max(p, low), high)


def hygiene_reason(chosen: str, rejected: str) -> str | None:
    """Why a pair must not be trained on, whatever its label: empty or equal texts, or text addressed to the
    judge in either response."""
    if not chosen.strip() or not rejected.strip():
        return "empty"
    if " ".join(chosen.split()) == " ".join(rejected.split()):
        return "equal"
    if is_injection(chosen) or is_injection(rejected):
        return "injection"
    return None


def annealed_margin(iteration: int, start: float, end: float | None, iterations: int) -> float:
    """The confidence threshold of iteration `iteration` (1-based): `start` at 1, moving linearly to `end` at
    `iterations`, then held (no annealing when `end` is None)."""
    if end is None or iterations <= 1:
        return start if end is None else end
    progress = min(max(iteration - 1, 0), iterations - 1) / (iterations - 1)
    return start + (end - start) * progress


def mean_length_difference(pairs: Sequence[Candidate]) -> float | None:
    """The mean of len(chosen) - len(rejected), in characters."""
    return sum(p.length_difference for p in pairs) / len(pairs) if pairs else None


@dataclass
class Sampled:
    kept: list[Candidate]
    dropped: Counter[str] = field(default_factory=Counter)
    length_difference_before: float | None = None
    """Mean chosen-minus-rejected length of the confident, new pairs, before length control."""
    length_difference_after: float | None = None


def _control_length(pairs: list[Candidate], tolerance: float) -> tuple[list[Candidate], int]:
    """Reject the pairs that push the mean length difference furthest from zero until
    |mean(chosen - rejected)| <= tolerance * mean(rejected length)."""
    kept = sorted(pairs, key=lambda p: p.length_difference)
    removed = 0
    while kept:
        mean = sum(p.length_difference for p in kept) / len(kept)
        allowed = tolerance * sum(len(p.rejected) for p in kept) / len(kept)
        if abs(mean) <= allowed:
            break
        kept.pop(-1 if mean > 0 else 0)
        removed += 1
    return kept, removed


def stratify(pairs: Sequence[Candidate], limit: int) -> list[Candidate]:
    """At most `limit` pairs, taken round-robin across principles (in id order), most confident first."""
    by_principle: dict[str, list[Candidate]] = defaultdict(list)
    for pair in sorted(pairs, key=lambda p: -p.confidence):
        by_principle[pair.principle_id].append(pair)
    queues = [by_principle[k] for k in sorted(by_principle)]
    taken: list[Candidate] = []
    depth = 0
    while len(taken) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(taken) < limit:
                taken.append(queue[depth])
        depth += 1
    return taken


def sample_pairs(candidates: Iterable[Candidate], *, margin: float, length_tolerance: float | None = 0.1,
                 max_pairs: int | None = None, seen: set[str] | frozenset[str] = frozenset(),
                 dropped: Counter[str] | None = None) -> Sampled:
    """Keep the pairs to train on: hygiene, confidence >= margin, new (not in `seen`, no repeats), length
    bias controlled, then at most `max_pairs` stratified across principles. `dropped` carries counts of
    earlier drops (e.g. abstentions) into the result."""
    counts: Counter[str] = Counter(dropped or {})
    keys = set(seen)
    fresh: list[Candidate] = []
    for candidate in candidates:
        reason = hygiene_reason(candidate.chosen, candidate.rejected)
        if reason is None and candidate.confidence < margin:
            reason = "not-confident"
        if reason is None and candidate.key in keys:
            reason = "duplicate"
        if reason:
            counts[reason] += 1
            continue
        keys.add(candidate.key)
        fresh.append(candidate)
    result = Sampled(kept=fresh, dropped=counts, length_difference_before=mean_length_difference(fresh))
    if length_tolerance is not None:
        controlled, removed = _control_length(fresh, length_tolerance)
        if removed:
            counts["length-bias"] += removed
        # Back in arrival order, so that stored pairs follow their samples.
        kept_ids = {id(p) for p in controlled}
        result.kept = [p for p in fresh if id(p) in kept_ids]
    if max_pairs is not None and len(result.kept) > max_pairs:
        chosen_ids = {id(p) for p in stratify(result.kept, max_pairs)}
        counts["over-limit"] += len(result.kept) - max_pairs
        result.kept = [p for p in result.kept if id(p) in chosen_ids]
    result.length_difference_after = mean_length_difference(result.kept)
    return result
