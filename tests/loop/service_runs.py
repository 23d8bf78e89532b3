"""A run of the service as separate `cai` processes, and what tests count in it."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from loop.store import Comparison, Critique, Iteration, Pair, Policy, Run, RunLease, Sample, StageRun, Store
from loop.store.database import open_run_store
from loop.store.shards import ensure_claims
from tests.loop.runs import ROOT, cai_command, cai_env

STEP_TIMEOUT_S = 240
"""Bound on each wait: a process start, a point in the iteration, an exit."""


def planned_stage(store: Store, stage: str, shards: int) -> int:
    """A run with one iteration whose `stage` has `shards` planned claim rows; the iteration's id."""
    with store.session() as session:
        run = Run(name="r", config={})
        session.add(run)
        session.flush()
        iteration = Iteration(run_id=run.id, index=1, policy_version=0, constitution_hash="h")
        session.add(iteration)
        session.flush()
        ensure_claims(session, iteration.id, stage, shards)
        return iteration.id


def run_counts(run_dir: Path, env: dict[str, str]) -> dict[str, int]:
    """Row counts of what an iteration records, and the number of duplicated output keys (must be 0)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("CAI_")})
    try:
        store = open_run_store(run_dir, write=False)
    finally:
        for k in env:
            if k.startswith("CAI_"):
                os.environ.pop(k, None)
    with store.session() as s:
        counts = {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                  for model in (Iteration, Sample, Critique, Comparison, Pair, Policy)}
        counts["iterations_done"] = s.scalar(select(func.count()).select_from(Iteration)
                                             .where(Iteration.status == "done"))
        keys = Counter(s.execute(select(Comparison.sample_id, Comparison.kind)).all())
        keys.update(("critique", *row) for row in s.execute(select(Critique.sample_id, Critique.round)).all())
        keys.update(("pair", row) for row in s.scalars(select(Pair.comparison_id)))
        keys.update(("sample", *row) for row in s.execute(select(Sample.iteration_id, Sample.prompt_id,
                                                                 Sample.sample_index)).all())
        counts["duplicates"] = sum(n - 1 for n in keys.values())
        counts["unanswered"] = s.scalar(select(func.count()).select_from(Sample).where(
            (Sample.response.is_(None)) | (Sample.revision.is_(None))))
    store.dispose()
    return counts


class Service:
    """A controller and workers as separate `cai` processes over one broker and one PostgreSQL database."""

    def __init__(self, folder: Path, config: Path, broker_url: str, database_url: str):
        self.folder, self.config, self.run_dir = folder, config, folder / "run"
        self.env = cai_env(CAI_BROKER_URL=broker_url, CAI_DATABASE_URL=database_url)
        self.started = 0

    def _start(self, *args: str) -> subprocess.Popen:
        self.started += 1
        log = (self.folder / f"{args[0]}-{self.started}.log").open("w")
        return subprocess.Popen(cai_command(*args), cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)

    def controller(self, iterations: int = 1) -> subprocess.Popen:
        return self._start("run", "--config", str(self.config), "--run-dir", str(self.run_dir),
                           "--iterations", str(iterations))

    def worker(self, queues: str = "infer,cpu,train") -> subprocess.Popen:
        return self._start("worker", "--queues", queues)

    def counts(self) -> dict[str, int]:
        return run_counts(self.run_dir, self.env)

    def progress(self) -> int:
        """Shards done so far (0 before the database has the tables)."""
        try:
            counts = self.query(lambda s: s.scalar(select(func.count()).select_from(StageRun)))
        except Exception:
            return 0
        return counts or 0

    def query(self, fn):
        os.environ["CAI_DATABASE_URL"] = self.env["CAI_DATABASE_URL"]
        try:
            store = open_run_store(self.run_dir, write=True)
        finally:
            os.environ.pop("CAI_DATABASE_URL")
        try:
            with store.session() as session:
                return fn(session)
        finally:
            store.dispose()

    def lease_pid(self) -> int | None:
        try:
            return self.query(lambda s: s.scalar(select(RunLease.pid)))
        except Exception:
            return None

    def log(self, process_number: int) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob(f"*-{process_number}.log")))


def wait_exit(process: subprocess.Popen, what: str) -> int:
    try:
        return process.wait(STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{what} did not finish within {STEP_TIMEOUT_S} s")


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)


