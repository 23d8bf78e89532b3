"""The database's tables: the source of truth for every run, iteration, sample, verdict, pair and policy.

SQLite (WAL) in the run directory by default; the same models work on PostgreSQL. The engine and sessions are
`loop.store.session`'s, the shared selects `loop.store.queries`'.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    config: Mapped[dict[str, Any]]
    current_policy: Mapped[int] = mapped_column(default=0)
    """Version of the policy that generates the next iteration (0 is the base model)."""


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    index: Mapped[int]
    status: Mapped[str] = mapped_column(default="running")
    policy_version: Mapped[int]
    """The policy π_i that generated this iteration's samples."""
    constitution_hash: Mapped[str]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class StageRun(Base):
    """A finished stage shard; written in the same transaction as the shard's outputs."""

    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("iteration_id", "stage", "shard"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"))
    stage: Mapped[str]
    shard: Mapped[int] = mapped_column(default=0)
    wall_s: Mapped[float]
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sample(Base):
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    prompt_id: Mapped[str]
    prompt_category: Mapped[str]
    prompt: Mapped[str] = mapped_column(Text)
    sample_index: Mapped[int] = mapped_column(default=0)
    response: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(Text)
    """The last round's revision: the candidate compared against `response`."""
    policy_version: Mapped[int]
    constitution_hash: Mapped[str]


class Critique(Base):
    """One critique → revision round of a sample."""

    __tablename__ = "critiques"
    __table_args__ = (UniqueConstraint("sample_id", "round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    round: Mapped[int]
    principle_id: Mapped[str]
    critique: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    constitution_hash: Mapped[str]


class Contrast(Base):
    """The contrastive (RLCD) answers of a sample: π_i under a principle's positive and negative system prompt."""

    __tablename__ = "contrasts"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), unique=True)
    principle_id: Mapped[str]
    positive: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text)
    constitution_hash: Mapped[str]


class Comparison(Base):
    """The judge's verdict on response (A) against revision (B) under one principle (kind "revision"), or on
    the negative (A) against the positive (B) contrastive answer (kind "contrastive")."""

    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    principle_id: Mapped[str]
    judge: Mapped[str]
    p_b_when_second: Mapped[float]
    p_b_when_first: Mapped[float]
    p_b: Mapped[float]
    """Position-debiased p(revision better): the mean of the two orders."""
    constitution_hash: Mapped[str]
    kind: Mapped[str] = mapped_column(default="revision")
    method: Mapped[str] = mapped_column(default="labels")
    abstained: Mapped[bool] = mapped_column(default=False)
    suspect: Mapped[bool] = mapped_column(default=False, server_default=false(), deferred=True)
    """The consistency check's flag (`critique.consistency`): the winner stops winning without one part of it."""


class Pair(Base):
    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int | None] = mapped_column(ForeignKey("comparisons.id"), unique=True)
    """The verdict behind the label (None for a contrastive pair that was not judged)."""
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    chosen_is_revision: Mapped[bool]
    target: Mapped[float]
    """Soft label: the probability that `chosen` is better (the judge's, clamped, or the label by construction)."""
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id"), index=True)
    source: Mapped[str] = mapped_column(default="judged")
    """judged | revision | contrastive: how the pair was made and labelled."""
    principle_id: Mapped[str | None]
    key: Mapped[str | None] = mapped_column(index=True)
    """The pair's identity across iterations (prompt, chosen, rejected), for de-duplication."""


class SampledAnswer(Base):
    """One of a sample's K answers for the sampled (best-of-K) pair source: plain, or under a principle's
    positive or negative steering (its system prompt and prefix)."""

    __tablename__ = "sampled_answers"
    __table_args__ = (UniqueConstraint("sample_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    index: Mapped[int]
    steering: Mapped[str]
    """plain | positive | negative"""
    principle_id: Mapped[str | None]
    text: Mapped[str] = mapped_column(Text)
    reward: Mapped[float | None]
    """The combined reward (`rewards.combine`); None until scored, or when no component could score it."""


class RewardScore(Base):
    """One reward component of a sampled answer, so every reward traces to the check or model that gave it."""

    __tablename__ = "reward_scores"
    id: Mapped[int] = mapped_column(primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("sampled_answers.id"), index=True)
    kind: Mapped[str]
    name: Mapped[str]
    value: Mapped[float | None]
    """None: this component cannot score this answer."""
    weight: Mapped[float]


class Replay(Base):
    """A pair of an earlier iteration trained on again in this one (the replay buffer)."""

    __tablename__ = "replays"
    __table_args__ = (UniqueConstraint("iteration_id", "pair_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))


class Review(Base):
    """A person's verdict on a pair: keep, flip (chosen and rejected swapped) or drop. The latest one counts."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    verdict: Mapped[str]
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("run_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    version: Mapped[int]
    parent_version: Mapped[int | None]
    adapter_path: Mapped[str | None]
    """None for version 0, the base model."""
    iteration_id: Mapped[int | None] = mapped_column(ForeignKey("iterations.id"))
    constitution_hash: Mapped[str | None]
    trainer: Mapped[str | None]
    pairs: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    stage: Mapped[str]
    name: Mapped[str]
    value: Mapped[float]
    step: Mapped[int | None]


class EvalResponse(Base):
    """A policy's greedy answer to one held-out eval prompt: generated once, reused by every later evaluation."""

    __tablename__ = "eval_responses"
    __table_args__ = (UniqueConstraint("run_id", "policy_version", "eval_set", "prompt_id", "settings_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    policy_version: Mapped[int]
    eval_set: Mapped[str]
    prompt_id: Mapped[str]
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int]
    settings_key: Mapped[str]
    """Hash of what shapes the text (model, max_new_tokens): other settings never reuse these answers."""
    refusal: Mapped[bool | None]
    classifier: Mapped[str | None]
    """Which refusal classifier set `refusal` (lexical, outcome, or judge:NAME)."""


class EvalComparison(Base):
    """The judge's verdict on a candidate's eval answer (B) against an opponent policy's answer (A)."""

    __tablename__ = "eval_comparisons"
    __table_args__ = (UniqueConstraint("candidate_id", "opponent_id", "judge"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("eval_responses.id"))
    opponent_id: Mapped[int] = mapped_column(ForeignKey("eval_responses.id"))
    principle_id: Mapped[str]
    judge: Mapped[str]
    p_b_when_second: Mapped[float]
    p_b_when_first: Mapped[float]


class Evaluation(Base):
    """One candidate policy measured on the held-out sets against a previous policy and the base."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration_id: Mapped[int | None] = mapped_column(ForeignKey("iterations.id"), index=True)
    """None for an evaluation asked for with `cai eval`."""
    policy_version: Mapped[int]
    previous_version: Mapped[int]
    refusal_classifier: Mapped[str]
    wall_s: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalMetric(Base):
    __tablename__ = "eval_metrics"
    __table_args__ = (UniqueConstraint("evaluation_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    name: Mapped[str]
    value: Mapped[float]


class GateDecision(Base):
    """promote | reject | halt for one iteration's candidate, with every check's number and limit."""

    __tablename__ = "gate_decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), unique=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    candidate_version: Mapped[int | None]
    current_version: Mapped[int]
    """The policy that generates the next iteration after this decision."""
    outcome: Mapped[str]
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    """A halt blocks the run until an operator acts (`cai rollback`)."""


class PolicyMove(Base):
    """Every move of the current-policy pointer: promotions by the gates, rollbacks by operators."""

    __tablename__ = "policy_moves"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    from_version: Mapped[int]
    to_version: Mapped[int]
    kind: Mapped[str]
    """promote | rollback"""
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IterationInputs(Base):
    """The constitution and config an iteration ran with: one row when it starts, and one more each time it is
    resumed with changed inputs (`--allow-changed`), so both hashes stay on record."""

    __tablename__ = "iteration_inputs"
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    constitution_hash: Mapped[str]
    config_hash: Mapped[str]
    config: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunLease(Base):
    """Who is working on a run now (see `loop.store.lease`): one row per run, changed only by compare-and-set."""

    __tablename__ = "run_leases"
    run: Mapped[str] = mapped_column(primary_key=True)
    token: Mapped[str]
    """Random per acquisition: the key of every compare-and-set."""
    host: Mapped[str]
    pid: Mapped[int]
    started_at: Mapped[datetime]
    heartbeat: Mapped[float]
    """Seconds since the epoch on the holder's clock."""


class ShardClaim(Base):
    """One shard of an iteration's stage handed to the daemon's workers (`loop.store.shards`): who holds it and until
    when, changed only by compare-and-set. Its StageRun row (same iteration, stage and shard) is its done mark."""

    __tablename__ = "shard_claims"
    __table_args__ = (UniqueConstraint("iteration_id", "stage", "shard"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("iterations.id"), index=True)
    stage: Mapped[str]
    shard: Mapped[int]
    shards: Mapped[int]
    """How many shards the stage was split into (fixed when the stage starts)."""
    owner: Mapped[str | None]
    """host:pid:token of the worker working on it, None when no one is."""
    expires_at: Mapped[float] = mapped_column(default=0.0)
    """Seconds since the epoch: past it, the owner is presumed dead and the shard may be claimed again."""
    sent_at: Mapped[float] = mapped_column(default=0.0)  # when its message was last sent to the broker
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    """The last failed attempt's error line."""
    gang: Mapped[str | None] = mapped_column(Text)
    """A training gang's rendezvous (`loop.store.gangs`): the one node rank 0 opened, or the one a node joined."""


class ConstitutionVersion(Base):
    """A constitution the run has used, whole (its resolved model as JSON), so any two versions can be diffed
    later even after the file was edited: recorded when an iteration starts with it."""

    __tablename__ = "constitution_versions"
    hash: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str]
    content: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class ControlRequest(Base):
    """An operator's request to a run (`loop.operate.control`): pause, resume or stop the daemon, or move the current
    policy (promote, rollback). Any process may add one; the run's lease holder applies the policy moves."""

    __tablename__ = "control_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    action: Mapped[str]
    """pause | resume | stop | promote | rollback"""
    to_version: Mapped[int | None]
    note: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str]
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)
    """What happened: the policy move made, or why the request was refused."""


class Meta(Base):
    """Key/value facts about the database itself; `schema_version` lets a later migration start from here."""

    __tablename__ = "cai_meta"
    key: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[str]


SCHEMA_VERSION = 1
"""1: the first versioned schema (adds cai_meta, run_leases, iteration_inputs to the unversioned tables)."""
