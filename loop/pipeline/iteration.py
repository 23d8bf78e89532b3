"""One iteration of the loop: validate its inputs, take the run's lease, open (or resume) the iteration, run its
stages in order, and let the gates decide on its policy."""

from __future__ import annotations

import hashlib
import logging
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from constitution import Constitution, load_constitution
from loop.config import ConfigError, RunConfig, save_run_config
from loop.evaluation.sets import check_eval_inputs
from loop.operate.promotion import decide_iteration, ensure_not_halted
from loop.operate.summary import iteration_summary
from loop.pipeline import vllm_backend
from loop.pipeline.context import Engines, IterationContext
from loop.pipeline.inputs import InputsChanged, config_hash, describe_changes, fingerprint, record_constitution
from loop.pipeline.stages import STAGES
from loop.progress import NullReporter, Position, Reporter
from loop.prompts import load_prompts, select_prompts
from loop.store import Iteration, IterationInputs, Metric, Policy, Run, Sample, Store, utcnow
from loop.store.database import open_run_store
from loop.store.lease import acquire
from loop.store.queries import latest_inputs, latest_iteration, policy, run_name, run_row
from loop.store.shards import done_shards, shard_count
from loop.tracking import IterationTracker, check_tracking, open_tracker
from policies.models import resolve_model_dir
from policies.runtime import configure_threads
from policies.serving.vllm_client import ServerError

log = logging.getLogger(__name__)


def validate_inputs(config: RunConfig) -> Constitution:
    """Everything a run reads, checked before anything is written: the constitution, the prompts, the models."""
    constitution = load_constitution(config.constitution)
    load_prompts(config.prompts.files)
    check_eval_inputs(config.evaluation, config.seed)
    resolve_model_dir(config.model.name, config.home)
    if config.judge.model and not config.generation.served:
        resolve_model_dir(config.judge.model, config.home)
    check_tracking(config.tracking)
    return constitution


def _check_resumed_inputs(session, iteration: Iteration, constitution_hash: str, fields: dict[str, Any],
                          allow_changed: bool) -> None:
    """A resumed iteration keeps its inputs; with `allow_changed` the new ones are recorded beside the old."""
    recorded = latest_inputs(session, iteration.id)
    changes = describe_changes(recorded.constitution_hash if recorded else iteration.constitution_hash,
                               constitution_hash, recorded.config if recorded else None, fields)
    if not changes:
        return
    if not allow_changed:
        raise InputsChanged(f"iteration {iteration.index} was started with other inputs ({'; '.join(changes)}); "
                            "resume it with the original ones, or pass --allow-changed to go on with these "
                            "(both are then recorded)")
    log.warning("iteration %d resumes with changed inputs: %s", iteration.index, "; ".join(changes))
    session.add(IterationInputs(iteration_id=iteration.id, constitution_hash=constitution_hash,
                                config_hash=config_hash(fields), config=fields))


def open_iteration(store: Store, config: RunConfig, run_dir: Path, constitution_hash: str, *,
                   allow_changed: bool = False) -> tuple[int, int, int]:
    """(run id, iteration id, iteration index): the unfinished iteration if there is one, else a new one.

    Resuming with another constitution or config raises InputsChanged unless `allow_changed`.
    """
    fields = fingerprint(config)
    with store.session() as session:
        run = run_row(session)
        if run is None:
            run = Run(name=run_dir.name, config=config.model_dump(mode="json"))
            session.add(run)
            session.flush()
            session.add(Policy(run_id=run.id, version=0, parent_version=None, adapter_path=None))
        latest = latest_iteration(session)  # a database holds one run
        if latest is not None and latest.status != "done":
            _check_resumed_inputs(session, latest, constitution_hash, fields, allow_changed)
            log.info("resuming iteration %d", latest.index)
            return run.id, latest.id, latest.index

        index = 1 + (latest.index if latest else 0)
        iteration = Iteration(run_id=run.id, index=index, policy_version=run.current_policy,
                              constitution_hash=constitution_hash)
        session.add(iteration)
        session.flush()
        session.add(IterationInputs(iteration_id=iteration.id, constitution_hash=constitution_hash,
                                    config_hash=config_hash(fields), config=fields))
        prompts = select_prompts(load_prompts(config.prompts.files), config.prompts.per_iteration,
                                 config.seed, index, config.prompts.draw)
        for record in prompts:
            for k in range(config.generation.samples_per_prompt):
                session.add(Sample(iteration_id=iteration.id, prompt_id=record.id, prompt_category=record.category,
                                   prompt=record.prompt, sample_index=k, policy_version=run.current_policy,
                                   constitution_hash=constitution_hash))
        return run.id, iteration.id, index


def _engines(config: RunConfig, store: Store, run_id: int, run_dir: Path) -> Engines:
    """The engines of the run's current policy."""
    with store.session() as session:
        run = session.get(Run, run_id)
        current = policy(session, run_id, run.current_policy)
        adapter = run_dir / current.adapter_path if current.adapter_path else None
        return Engines(config, run.current_policy, adapter, run_name=run.name)


def _finish(ctx: IterationContext) -> None:
    """The gates decide on the iteration's candidate: promote (the next iteration generates with it), reject
    (keep π_i; the iteration's data stays) or halt (keep π_i and block the run until an operator acts)."""
    with ctx.store.session() as session:
        ctx.fence(session)
        decision = decide_iteration(session, ctx.run_id, ctx.iteration_id, ctx.config.gates)
        iteration = session.get(Iteration, ctx.iteration_id)
        iteration.status = "done"
        iteration.finished_at = utcnow()
        outcome, candidate = decision.outcome, decision.candidate_version
        reasons = [c["reason"] for c in decision.checks if not c["passed"]]
    log.info("gates: %s candidate v%s%s", outcome, candidate, f" ({'; '.join(reasons)})" if reasons else "")
    if outcome == "promote" and ctx.engines.served:
        try:
            vllm_backend.publish(ctx.config.generation.server, ctx.store, ctx.run_id, ctx.run_dir)
        except ServerError as exc:
            # The promotion stands; the next iteration loads the adapter before it generates.
            log.warning("policy v%d is promoted but could not be published to the vLLM server: %s", candidate, exc)


def _tracker(config: RunConfig, store: Store, run_dir: Path, run_id: int, index: int) -> IterationTracker:
    """The iteration's tracker (`tracking:`): its training steps continue after those of the earlier iterations
    (each trainer run's steps are numbered from 1, its last one the highest), so a resume numbers them alike."""
    if not config.tracking.enabled:
        return IterationTracker([], index)
    with store.session() as session:
        run = session.get(Run, run_id)
        name, created = run.name, run.created_at.isoformat()
        steps_before = sum(session.scalars(
            select(func.max(Metric.step)).join(Iteration, Metric.iteration_id == Iteration.id)
            .where(Iteration.index < index, Metric.step.is_not(None)).group_by(Metric.iteration_id, Metric.stage)))
    key = hashlib.sha256(f"{name}|{created}".encode()).hexdigest()[:16]  # the same W&B run every iteration
    return open_tracker(config.tracking, run_dir, iteration=index, steps_before=steps_before, run_name=name,
                        run_key=key, config=config.model_dump(mode="json"))


def _summary(store: Store, iteration_id: int) -> dict[str, Any]:
    with store.session() as session:
        return iteration_summary(session, session.get(Iteration, iteration_id))


def _run_stages(ctx: IterationContext, position: Position) -> None:
    """The iteration's pending stage shards, in order; each finished stage's values go to the tracker."""
    for stage in STAGES.values():
        with ctx.store.session() as session:
            # One shard per stage, unless a daemon (`cai run`) began splitting it: then its shards.
            shards = shard_count(session, ctx.iteration_id, stage.name, None)
            pending = sorted(set(range(shards)) - done_shards(session, ctx.iteration_id, stage.name))
        if not pending:
            log.info("stage %s of iteration %d already done", stage.name, ctx.iteration_index)
            continue
        log.info("stage %s of iteration %d starting", stage.name, ctx.iteration_index)
        position.stage = stage.name
        for shard in pending:
            ctx.shard, ctx.shards = shard, shards
            ctx.begin(stage.name)
            stage.run(ctx)
        ctx.tracker.stage_done(stage.name, lambda: _summary(ctx.store, ctx.iteration_id))
    position.stage = None


def _run_name(store: Store, run_dir: Path) -> str:
    with store.session() as session:
        return run_name(session) or run_dir.name


def run_iteration(config: RunConfig, run_dir: Path, reporter: Reporter | None = None, *,
                  allow_changed: bool = False, position: Position | None = None) -> dict[str, Any]:
    """Run (or resume) one iteration in `run_dir` and return its summary.

    Nothing is written before the inputs validate and the database checks out; a run held by another live
    process is refused (`loop.store.lease.LeaseHeld`). `position` is kept up to date for interruption messages.
    """
    reporter = reporter or NullReporter()
    position = position if position is not None else Position()
    configure_threads(config.threads)
    if problem := config.train.needs_workers("cai iterate"):
        raise ConfigError(problem)
    constitution = validate_inputs(config)
    store = open_run_store(run_dir, write=True)
    try:
        with acquire(store, _run_name(store, run_dir)) as lease:
            with store.session() as session:
                run = run_row(session)
                if run is not None:
                    ensure_not_halted(session, run.id)
            run_id, iteration_id, index = open_iteration(store, config, run_dir, constitution.content_hash,
                                                         allow_changed=allow_changed)
            position.iteration = index
            record_constitution(store, constitution)
            save_run_config(config, run_dir / "config.yaml")
            ctx = IterationContext(config=config, store=store, run_dir=run_dir, run_id=run_id,
                                   iteration_id=iteration_id, iteration_index=index, constitution=constitution,
                                   engines=_engines(config, store, run_id, run_dir), reporter=reporter,
                                   fence=lease.fence, tracker=_tracker(config, store, run_dir, run_id, index))
            with closing(ctx.tracker):  # closed however the iteration ends: what was sent is written
                _run_stages(ctx, position)
                _finish(ctx)
                summary = _summary(store, iteration_id)
                ctx.tracker.decided(summary)
                return summary
    finally:
        store.dispose()
