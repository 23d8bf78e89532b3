"""What every stage of one iteration needs: config, store, ids, constitution and the loaded models."""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from constitution import Constitution, PrincipleSampler
from loop.config import RunConfig
from loop.pipeline import vllm_backend
from loop.pipeline.names import StageName
from loop.progress import Reporter
from loop.store import Metric, StageRun, Store
from loop.tracking import IterationTracker
from policies.models import ModelNotFoundError, load_model, model_specials, resolve_model_dir
from policies.serving import Generator
from policies.serving.control_tokens import specials_of
from policies.serving.transformers_backend import TransformersGenerator

if TYPE_CHECKING:
    from policies.training.launcher import Gang

log = logging.getLogger(__name__)


@dataclass
class Engines:
    """The policy π_i (base + its adapter) and the judge (the same weights with adapters disabled, unless
    `judge.model` names another model).

    transformers: loaded on first use and shared, so an iteration holds one copy of the weights for
    generation. vllm-server: clients of the server, where π_i is its adapter, published on first use.
    """

    config: RunConfig
    policy_version: int
    adapter: Path | None
    run_name: str = ""
    """Served adapters are named after the run (vllm-server)."""
    server: str | None = None
    """vllm-server: the server to use (a daemon's shard picks one of `generation.server.urls`); default `url`."""

    @property
    def served(self) -> bool:
        return self.config.generation.served

    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.config.model.name, self.config.home)

    @cached_property
    def _loaded(self):
        return load_model(self.model_dir, dtype=self.config.model.dtype, device=self.config.model.device,
                          adapter=self.adapter)

    @cached_property
    def _judge_loaded(self):
        model_dir = resolve_model_dir(self.config.judge.model, self.config.home)
        return load_model(model_dir, dtype=self.config.model.dtype, device=self.config.model.device)

    @cached_property
    def specials(self) -> tuple[str, ...]:
        """The policy model's control-token strings, from its local tokenizer also when a server serves it: they
        are neutralised in every prompt, and an answer that spells one is counted."""
        if self.served:
            return model_specials(self.model_dir)
        return specials_of(self._loaded[1])

    @cached_property
    def _judge_specials(self) -> tuple[str, ...] | None:
        """The served judge model's control-token strings; None (the common templates') when it is not local."""
        if not self.config.judge.model:
            return self.specials
        try:
            return model_specials(resolve_model_dir(self.config.judge.model, self.config.home))
        except ModelNotFoundError:
            log.warning("judge model %s is not available here: neutralising the common templates' control tokens "
                        "in what it is sent", self.config.judge.model)
            return None

    @cached_property
    def policy(self) -> Generator:
        if self.served:
            return vllm_backend.policy_generator(self.config.generation.server, self.config.model.name,
                                                 self.run_name, self.policy_version, self.adapter, self.server,
                                                 specials=self.specials)
        model, tokenizer = self._loaded
        return TransformersGenerator(model, tokenizer, name=f"{self.config.model.name}@v{self.policy_version}",
                                     batch_size=self.config.generation.batch_size)

    @cached_property
    def judge(self) -> Generator:
        if self.served:
            return vllm_backend.judge_generator(self.config.generation.server, self.config.judge,
                                                self.config.model.name, self.server, specials=self._judge_specials)
        if self.config.judge.model:
            model, tokenizer = self._judge_loaded
            return TransformersGenerator(model, tokenizer, name=self.config.judge.model,
                                         batch_size=self.config.judge.batch_size)
        model, tokenizer = self._loaded
        return TransformersGenerator(model, tokenizer, name=self.config.model.name,
                                     batch_size=self.config.judge.batch_size, use_adapter=False)

    def served_evaluation(self) -> vllm_backend.ServedEvaluation | None:
        """vllm-server: the evaluation's answers and verdicts from this iteration's server; None in-process."""
        if not self.served:
            return None
        return vllm_backend.ServedEvaluation(self.config.generation.server, self.config.model.name, self.run_name,
                                             self.server, self.specials, self.judge)

    def counters(self) -> dict[str, float] | None:
        """The server's cumulative counters (vllm-server), to measure a stage; None for transformers."""
        if not self.served:
            return None
        return vllm_backend.server_counters(self.config.generation.server, self.config.judge.url)

    def release(self) -> None:
        """Free the generation weights before training loads its own trainable copy."""
        for name in ("_loaded", "_judge_loaded", "policy", "judge"):
            self.__dict__.pop(name, None)
        gc.collect()


@dataclass
class IterationContext:
    config: RunConfig
    store: Store
    run_dir: Path
    run_id: int
    iteration_id: int
    iteration_index: int
    constitution: Constitution
    engines: Engines
    reporter: Reporter
    fence: Callable[[Session], None] = lambda session: None
    """Raises inside a transaction if this process no longer holds the run (`loop.store.lease.Lease.fence`) or, in a
    daemon's worker, its shard (`loop.store.shards.Claim.fence`)."""
    shard: int = 0
    shards: int = 1
    """This context works on shard `shard` of `shards`: every `shards`-th sample, by id (`mine`)."""
    stage: StageName | None = None
    """The stage running now, named once when it starts (`begin`): `complete` records it."""
    started: float = 0.0
    counters_at_start: dict[str, float] | None = None
    tracker: IterationTracker = field(default_factory=lambda: IterationTracker([], 0))
    """Where the iteration's metrics are also sent (`tracking:`); by default nowhere."""
    gang: Gang | None = None
    """On node rank 0 of a training gang (`train.nodes`), the hooks its trainer runs open their rendezvous with
    (`loop.service.gang.GangLead`); None elsewhere."""

    @property
    def constitution_hash(self) -> str:
        return self.constitution.content_hash

    @cached_property
    def sampler(self) -> PrincipleSampler:
        return PrincipleSampler(self.constitution, seed=self.config.seed)

    def seed_for(self, stage: str) -> int:
        # hashlib, not hash(): string hashes change between processes, and a resumed stage must not.
        digest = hashlib.sha256(f"{self.config.seed}:{self.iteration_index}:{stage}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

    def mine(self, items: list) -> list:
        """This shard's part of all the iteration's samples (ordered by id): a fixed slice per shard."""
        return items if self.shards == 1 else items[self.shard::self.shards]

    def begin(self, stage: str) -> None:
        """Start `stage`: name it, start its clock (and, on a server, note its counters) just before it runs."""
        self.stage = StageName(stage)
        self.started = time.perf_counter()
        self.counters_at_start = self.engines.counters()

    def complete(self, session: Session) -> None:
        """Record this stage shard as done: call inside the transaction that writes its outputs (its unique
        (iteration, stage, shard) makes a second commit of the same shard fail with all its outputs)."""
        self.fence(session)
        wall = time.perf_counter() - self.started
        session.add(StageRun(iteration_id=self.iteration_id, stage=self.stage.value, shard=self.shard, wall_s=wall))
        before = self.counters_at_start
        after = self.engines.counters() if before is not None else None
        if before is not None and after is not None:
            for name, value in vllm_backend.serving_metrics(before, after, wall).items():
                session.add(Metric(iteration_id=self.iteration_id, stage=self.stage.value, name=name, value=value))
