"""What every stage of one iteration needs: config, store, ids, constitution and the loaded models."""

from __future__ import annotations

import gc
import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy.orm import Session

from constitution import Constitution, PrincipleSampler
from loop.config import RunConfig
from loop.progress import Reporter
from loop.store import StageRun, Store
from policies.models import load_model, resolve_model_dir
from policies.serving import TransformersGenerator


@dataclass
class Engines:
    """The policy π_i (base + its adapter) and the judge (the same weights with adapters disabled).

    Loaded on first use and shared, so an iteration holds one copy of the weights for generation.
    """

    config: RunConfig
    policy_version: int
    adapter: Path | None

    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.config.model.name, self.config.home)

    @cached_property
    def _loaded(self):
        return load_model(self.model_dir, dtype=self.config.model.dtype, device=self.config.model.device,
                          adapter=self.adapter)

    @cached_property
    def policy(self) -> TransformersGenerator:
        model, tokenizer = self._loaded
        return TransformersGenerator(model, tokenizer, name=f"{self.config.model.name}@v{self.policy_version}",
                                     batch_size=self.config.generation.batch_size)

    @cached_property
    def judge(self) -> TransformersGenerator:
        model, tokenizer = self._loaded
        return TransformersGenerator(model, tokenizer, name=self.config.model.name,
                                     batch_size=self.config.judge.batch_size, use_adapter=False)

    def release(self) -> None:
        """Free the generation weights before training loads its own trainable copy."""
        for name in ("_loaded", "policy", "judge"):
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
    started: dict[str, float] = field(default_factory=dict)

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

    def complete(self, session: Session, stage: str, shard: int = 0) -> None:
        """Record the stage shard as done: call inside the transaction that writes its outputs."""
        wall = time.perf_counter() - self.started[stage]
        session.add(StageRun(iteration_id=self.iteration_id, stage=stage, shard=shard, wall_s=wall))
