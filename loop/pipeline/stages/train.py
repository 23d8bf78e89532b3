"""The train stage: turn this iteration's pairs (and revisions) into π_{i+1}.

What it trains on: this iteration's pairs plus replayed pairs of earlier iterations (`train.replay`), capped by
`train.budget`, after an optional SFT warm start on checked sampled answers (`train.warm_start`); the
selections live in `train_data`. With `train.trainer: grpo` it trains on the iteration's prompts instead (GRPO
samples and scores its own rollouts), with no pairs at all.

Every trainer runs in its own process through `policies.training.launcher` (the same
`python -m policies.training SPEC.json` that torchrun or deepspeed start on GPU nodes), with its data written
as JSONL under the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from constitution import load_constitution
from constitution.source import resolve_constitution_path
from loop.pipeline.names import StageName
from loop.pipeline.stages.train_data import (
    checked_answers,
    iteration_pairs,
    replay_pairs,
    rollout_records,
    within_budget,
)
from loop.prompts import load_prompts
from loop.store import Metric, Policy, Replay, Run, Sample
from loop.store.queries import policy, run_policies
from policies.files import atomic_directory, atomic_write_text

if TYPE_CHECKING:  # the training code loads torch: imported when a trainer runs, not with the stage registry
    from loop.config import RunConfig
    from loop.pipeline.context import IterationContext
    from policies.training.settings import SFTSettings
    from policies.training.spec import TrainerKind, TrainSpec

log = logging.getLogger(__name__)

REFERENCE_CACHE = "reference_logps"
"""Under `RUN_DIR/training/`: the reference log-probs of every pair trained so far (replays are not scored again)."""
WARM_START = "warm_start"
"""The warm start's folder, metrics stage and seed name: an SFT run of its own beside sft_on_revisions'."""


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def trainer_seed(run_seed: int, iteration: int, kind: str) -> int:
    """A trainer's seed (data order, adapter and head init, dropout), derived from the run's `seed`."""
    # hashlib, not hash(): string hashes change between processes, and a resumed run must not.
    digest = hashlib.sha256(f"{run_seed}:{iteration}:train-{kind}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def train_spec(config: RunConfig, kind: TrainerKind, *, iteration: int, settings=None, **fields) -> TrainSpec:
    """The spec of one trainer run: every config field that acts in the trainer reaches it from here (the
    trainer's section, or `settings` for a run the loop configures itself: the warm start)."""
    from policies.training.spec import TrainSpec

    t = config.train
    settings = settings or t.trainer_settings(kind, trainer_seed(config.seed, iteration, kind))
    if kind == "grpo":  # what GRPO scores its rollouts with: the run's rewards, the checks of its constitution
        fields = {"rewards": config.rewards, "constitution": resolve_constitution_path(config.constitution), **fields}
    return TrainSpec(kind=kind, lora=t.lora, device=config.model.device, dtype=config.model.dtype,
                     threads=config.threads, deepspeed=t.deepspeed, **{kind: settings}, **fields)


class Training:
    """The trainer runs of one iteration, chained: each starts from the adapter the previous one produced."""

    def __init__(self, ctx: IterationContext, parent_adapter: Path | None):
        self.ctx = ctx
        self.adapter = parent_adapter
        self.root = ctx.run_dir / "training" / f"iteration-{ctx.iteration_index}"
        self.metrics: list[Metric] = []

    def run(self, kind: TrainerKind, records: list[dict[str, Any]], *, chain: bool = True, name: str | None = None,
            **extra) -> Path:
        """Train `kind` on `records`; `name` (default: the kind) names its folder and, when set, its metrics'
        stage, for a second run of the same trainer kind in one iteration."""
        from policies.training.launcher import SlurmAllocation, launch

        t = self.ctx.config.train
        out = self.root / (name or kind)
        data = _write_jsonl(out / "data.jsonl", records)
        spec = train_spec(self.ctx.config, kind, iteration=self.ctx.iteration_index,
                          model_dir=self.ctx.engines.model_dir, data=data, output_dir=out,
                          parent_adapter=self.adapter if chain else None, **extra)
        stage = name or (StageName.TRAIN.value if chain and kind != "sft" else kind)
        with self.ctx.reporter.task(f"train {name or kind} ({len(records)} examples)", None) as advance:

            def on_progress(event: dict[str, Any]) -> None:
                if event["kind"] == "step":
                    advance(1)
                    self.record(stage, event, step=event["step"])
                    self.ctx.tracker.training_step(stage, event)

            gang = self.ctx.gang or (SlurmAllocation(t.nodes, t.rendezvous_timeout_s, t.rendezvous)
                                     if t.launcher == "slurm" else None)
            self.record(stage, launch(spec, launcher=t.launcher, processes=t.processes, gang=gang,
                                      slurm_args=t.slurm_args, on_progress=on_progress))
        if chain:
            self.adapter = spec.adapter_dir
        return spec.adapter_dir

    def record(self, stage: str, values: dict[str, Any], step: int | None = None) -> None:
        self.metrics += [Metric(iteration_id=self.ctx.iteration_id, stage=stage, name=k, value=float(v), step=step)
                         # NaN (e.g. a correlation over constant scores) means "undefined": not stored.
                         for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v) and k != "step"]


def warm_start_settings(config: RunConfig, iteration: int) -> SFTSettings:
    """The warm start's SFT settings: `train.warm_start`'s fields over the SFT trainer's defaults."""
    from policies.training.settings import SFTSettings

    w = config.train.warm_start
    return SFTSettings(learning_rate=w.learning_rate, epochs=w.epochs, max_completion_length=w.max_completion_length,
                       seed=trainer_seed(config.seed, iteration, WARM_START))


def warm_start(ctx: IterationContext, training: Training) -> None:
    """The warm start, when this iteration has one: SFT on the iteration's checked samples, chained before the
    preference run. Without any checked sample it is skipped, and says so."""
    w = ctx.config.train.warm_start
    if not w.applies_to(ctx.iteration_index):
        return
    with ctx.store.session() as session:
        answers = checked_answers(session, ctx.iteration_id)
    training.record(WARM_START, {"warm_start_examples": len(answers)})
    if not answers:
        log.info("warm start skipped: no sampled answer of iteration %d passed every check", ctx.iteration_index)
        return
    training.run("sft", [{"prompt": _user(prompt), "response": answer} for prompt, answer in answers],
                 name=WARM_START, settings=warm_start_settings(ctx.config, ctx.iteration_index))


def _lineage(ctx: IterationContext) -> tuple[int, Path | None, int]:
    """(the version trained from, its adapter or None for the base, the version the trained policy becomes)."""
    with ctx.store.session() as session:
        parent_version = session.get(Run, ctx.run_id).current_policy
        parent = policy(session, ctx.run_id, parent_version)
        next_version = 1 + max(p.version for p in run_policies(session, ctx.run_id))
    return parent_version, ctx.run_dir / parent.adapter_path if parent.adapter_path else None, next_version


def _rollout_server(config: RunConfig) -> str | None:
    """The on-policy trainers (PPO, GRPO) sample their rollouts from the vLLM server when the run generates there."""
    return config.generation.server.url if config.generation.served else None


def _publish(ctx: IterationContext, training: Training, parent_version: int, version: int, *, pairs: int = 0,
             replayed: list[int] | None = None) -> None:
    """The trained adapter as `policies/vN`, its `policies` row, the replayed pairs and the training metrics, all
    recorded in the transaction that completes the stage (a killed stage leaves none, and its re-run picks the
    same version). The adapter is renamed onto `policies/vN` inside that transaction, after the fence: a worker
    that was paused past its claim and finds the shard taken over replaces no one's adapter."""
    adapter_rel = f"policies/v{version}"
    with ctx.store.session() as session:
        session.add(Policy(run_id=ctx.run_id, version=version, parent_version=parent_version,
                           adapter_path=adapter_rel, iteration_id=ctx.iteration_id,
                           constitution_hash=ctx.constitution_hash, trainer=str(ctx.config.train.trainer),
                           pairs=pairs))
        session.add_all([Replay(iteration_id=ctx.iteration_id, pair_id=pair_id) for pair_id in replayed or []])
        session.add_all(training.metrics)
        ctx.complete(session)
        session.flush()  # a second recording of this shard fails here, before its adapter is moved
        with atomic_directory(ctx.run_dir / adapter_rel) as staging:
            shutil.copytree(training.adapter, staging, dirs_exist_ok=True)


def _check_graded_constitution(ctx: IterationContext) -> None:
    """The GRPO trainer grades the `checks` kind against the constitution file as it is now: say so when that is no
    longer the one this iteration runs under (edited since it began); a file that no longer loads fails here, before
    the trainer starts."""
    if all(c.kind != "checks" for c in ctx.config.rewards.components):
        return
    digest = load_constitution(ctx.config.constitution).content_hash
    if digest != ctx.constitution_hash:
        log.warning("the constitution %s changed since iteration %d began (%s, now %s): GRPO's checks grade "
                    "against the file as it is now", ctx.config.constitution, ctx.iteration_index,
                    ctx.constitution_hash, digest)


def train_on_rollouts(ctx: IterationContext) -> None:
    """`train.trainer: grpo`: π_{i+1} = π_i's adapter (or a fresh one) trained by GRPO on the iteration's prompts,
    each with its prompt record's task, sampled and scored by the trainer itself (the run's `rewards`)."""
    tasks = {record.id: record.task for record in load_prompts(ctx.config.prompts.files)}
    with ctx.store.session() as session:
        records = rollout_records(session, ctx.iteration_id, tasks)
    parent_version, parent_adapter, version = _lineage(ctx)
    _check_graded_constitution(ctx)
    ctx.engines.release()  # free the generation weights: training loads its own copy in a child process
    training = Training(ctx, parent_adapter)
    training.record(StageName.TRAIN.value, {"trained_prompts": len(records)})
    training.run("grpo", records, rollout_server=_rollout_server(ctx.config))
    _publish(ctx, training, parent_version, version)


def train(ctx: IterationContext) -> None:
    """π_{i+1} = π_i's adapter (or a fresh one) trained on this iteration's data by the configured trainer."""
    t = ctx.config.train
    if t.trainer == "grpo":
        train_on_rollouts(ctx)
        return
    with ctx.store.session() as session:
        fresh = iteration_pairs(session, ctx.iteration_id)
        replays = replay_pairs(session, ctx.run_id, ctx.iteration_index, fresh, t.replay)
        revisions = session.execute(select(Sample.prompt, Sample.revision).where(
            Sample.iteration_id == ctx.iteration_id, Sample.revision.is_not(None)).order_by(Sample.id)).all()
    if not fresh:  # replays only add to an iteration's own pairs: without any, nothing new was learned
        log.warning("no preference pairs passed the judge margin; no new policy this iteration")
        with ctx.store.session() as session:
            ctx.complete(session)
        return
    pairs = within_budget(fresh + replays, t.budget.max_pairs)
    replayed = [p.pair.id for p in pairs if p.replayed]
    parent_version, parent_adapter, version = _lineage(ctx)

    ctx.engines.release()  # free the generation weights: training loads its own copy in a child process
    training = Training(ctx, parent_adapter)
    training.record(StageName.TRAIN.value, {"trained_pairs": len(pairs), "replayed_pairs": len(replayed)})
    pair_records = [{"prompt": _user(p.prompt), "chosen": p.pair.chosen, "rejected": p.pair.rejected,
                     "target": p.pair.target} for p in pairs]
    warm_start(ctx, training)
    if t.sft_on_revisions:
        training.run("sft", [{"prompt": _user(prompt), "response": revision} for prompt, revision in revisions])
    if t.trainer == "ppo":
        reward_model = training.run("reward_model", pair_records, chain=False)
        prompts = sorted({p.prompt for p in pairs} | {prompt for prompt, _ in revisions})
        training.run("ppo", [{"prompt": _user(prompt)} for prompt in prompts], reward_model_dir=reward_model,
                     rollout_server=_rollout_server(ctx.config))
    else:
        training.run("preference", pair_records, reference_cache=ctx.run_dir / "training" / REFERENCE_CACHE)
    _publish(ctx, training, parent_version, version, pairs=len(pairs), replayed=replayed)
