"""What a daemon's worker does with one shard message: claim the shard, build its iteration context (with the
process's warm engines) and run the stage's own function on it (`loop.pipeline.stages.STAGES`), so a shard is exactly
the work `cai iterate` does for that slice of samples."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from constitution import Constitution, load_constitution
from loop.config import RunConfig, load_run_config
from loop.pipeline import vllm_backend
from loop.pipeline.context import Engines, IterationContext
from loop.pipeline.inputs import recorded_constitution
from loop.pipeline.stages import STAGES
from loop.progress import NullReporter
from loop.service.gang import GangLead, follow
from loop.store import ConstitutionVersion, Iteration, Run, Store, queries
from loop.store.database import open_run_store
from loop.store.shards import Claim, ShardLost, claim, describe
from policies.runtime import configure_threads

log = logging.getLogger(__name__)


class InputsMissing(RuntimeError):
    """The shard's iteration, policy or constitution is not in the database (a mismatched run folder)."""


def iteration_constitution(session, content_hash: str, config: RunConfig) -> Constitution:
    """The constitution an iteration runs with, as recorded whole when it started (`record_constitution`), so
    workers anywhere load exactly it."""
    row = session.get(ConstitutionVersion, content_hash)
    if row is not None:
        return recorded_constitution(row.content)
    constitution = load_constitution(config.constitution)  # an iteration begun by `cai iterate`
    if constitution.content_hash != content_hash:
        raise InputsMissing(f"the iteration ran with constitution {content_hash}, which is neither recorded nor "
                            f"the one {config.constitution} holds now ({constitution.content_hash})")
    return constitution


class ShardRunner:
    """One worker process's state: its stores and its engines, loaded once and kept warm between shards."""

    def __init__(self) -> None:
        self._stores: dict[str, Store] = {}
        self._engines: tuple[tuple, Engines] | None = None
        self._lock = threading.Lock()
        self._threads_set = False

    def store(self, run_dir: Path) -> Store:
        key = str(run_dir)
        if key not in self._stores:
            self._stores[key] = open_run_store(run_dir, write=True)
        return self._stores[key]

    def engines(self, config: RunConfig, run_dir: Path, run_name: str, version: int, adapter: str | None,
                shard: int = 0) -> Engines:
        """The same Engines (and so the same loaded weights) for every shard of the same policy; served shards
        are spread over the vLLM servers (`generation.server.urls`)."""
        served = config.generation.served
        server = vllm_backend.shard_server(config.generation.server, shard) if served else None
        key = (str(run_dir), config.model.name, config.judge.model, version, adapter, server)
        if self._engines is not None and self._engines[0] == key:
            return self._engines[1]
        if self._engines is not None:
            self._engines[1].release()
        engines = Engines(config, version, run_dir / adapter if adapter else None, run_name=run_name, server=server)
        self._engines = (key, engines)
        return engines

    def run(self, run_dir: Path, run_name: str, iteration_id: int, stage: str, shard: int) -> str:
        """'done', 'skipped' when the shard is done already or a live worker holds it (the message is then
        acknowledged and dropped: the controller re-sends a shard whose claim expires), or 'lost' when this worker
        was held up past its claim and another took the shard over (its work is not recorded)."""
        with self._lock:  # one shard at a time per process: the engines are shared
            return self._run(run_dir, run_name, iteration_id, stage, shard)

    def _run(self, run_dir: Path, run_name: str, iteration_id: int, stage: str, shard: int) -> str:
        store = self.store(run_dir)
        with store.session() as session:
            name = queries.run_name(session)
        if name != run_name:  # a broker shared by runs whose workers use other databases: not ours to do
            log.error("a shard of run %r reached a worker whose database holds run %r; ignored (give each run "
                      "its own CAI_DATABASE_URL and broker database)", run_name, name)
            return "skipped"
        config = load_run_config(run_dir / "config.yaml")
        if not self._threads_set:
            configure_threads(config.threads)
            self._threads_set = True
        held = claim(store, iteration_id, stage, shard, config.service.shard_lease_s)
        if held is None:
            log.info("%s shard %d of iteration id %d: done or held elsewhere; ignored", stage, shard, iteration_id)
            return "skipped"
        held.start_heartbeats()
        started = time.perf_counter()
        try:
            ctx = self._context(config, store, run_dir, iteration_id, stage, shard)
            ctx.fence = held.fence
            log.info("%s starting (attempt %d)", describe(stage, shard, ctx.shards, ctx.iteration_index), held.attempt)
            ctx.begin(stage)
            self._work(ctx, store, held)
        except ShardLost as exc:  # paused past the claim: the shard is another worker's; nothing to retry
            log.warning("%s", exc)
            return "lost"
        except BaseException as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            try:
                held.release(error=f"{type(exc).__name__}: {first}")
            except Exception as release_failed:  # the database is gone too: the claim expires by itself
                log.warning("could not release the claim: %s", release_failed)
            raise
        held.release()
        log.info("%s done in %.1f s", describe(stage, shard, ctx.shards, ctx.iteration_index),
                 time.perf_counter() - started)
        return "done"

    @staticmethod
    def _work(ctx: IterationContext, store: Store, held: Claim) -> None:
        """The stage's own function on this shard; of a training gang's shards, node rank 0 runs it with the gang's
        hooks and every other node follows node rank 0's trainer runs (`loop.service.gang`)."""
        stage = STAGES[ctx.stage]
        if stage.gang and ctx.shards > 1:
            if ctx.shard > 0:
                follow(ctx, store, held, ctx.config.service.poll_s)
                return
            ctx.gang = GangLead(store, held, ctx.config, ctx.iteration_id, ctx.stage.value)
        stage.run(ctx)

    def _context(self, config: RunConfig, store: Store, run_dir: Path, iteration_id: int, stage: str,
                 shard: int) -> IterationContext:
        from loop.store.shards import shard_count

        with store.session() as session:
            iteration = session.get(Iteration, iteration_id)
            if iteration is None:
                raise InputsMissing(f"no iteration with id {iteration_id} in the database of {run_dir}")
            run = session.get(Run, iteration.run_id)
            policy = queries.policy(session, run.id, iteration.policy_version)
            if policy is None:
                raise InputsMissing(f"policy v{iteration.policy_version} of iteration {iteration.index} is not "
                                    "recorded")
            constitution = iteration_constitution(session, iteration.constitution_hash, config)
            shards = shard_count(session, iteration_id, stage, None)
        engines = self.engines(config, run_dir, run.name, policy.version, policy.adapter_path, shard)
        return IterationContext(config=config, store=store, run_dir=run_dir, run_id=run.id,
                                iteration_id=iteration_id, iteration_index=iteration.index,
                                constitution=constitution, engines=engines, reporter=NullReporter(),
                                shard=shard, shards=shards)

    def close(self) -> None:
        if self._engines is not None:
            self._engines[1].release()
            self._engines = None
        for store in self._stores.values():
            store.dispose()
        self._stores.clear()


_runner: ShardRunner | None = None


def runner() -> ShardRunner:
    """This process's shard runner (its engines stay loaded between messages)."""
    global _runner
    if _runner is None:
        _runner = ShardRunner()
    return _runner
