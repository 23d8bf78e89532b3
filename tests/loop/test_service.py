"""The service (`cai run` + `cai worker`) over real Redis and PostgreSQL, with real processes.

Shard claims are compare-and-set on both databases; one iteration run by separate worker processes while `kill -9`
hits a worker or the controller at seeded random points (at least 10 times) ends with exactly the counts of an
uninterrupted embedded run and no duplicate rows; a second controller is refused; the iteration survives a Redis
restart that loses every queued message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from loop.store import (
    Comparison,
    Critique,
    Iteration,
    Pair,
    Policy,
    Run,
    RunLease,
    Sample,
    ShardClaim,
    StageRun,
    Store,
)
from loop.store.database import open_run_store
from loop.store.shards import ShardLost, claim, done_shards, ensure_claims
from tests.loop.runs import ROOT, cai_command, cai_env, run_cai, tiny_config, write_config
from tests.loop.services import postgres_database, postgres_server, redis_server

STEP_TIMEOUT_S = 240
"""Bound on each wait: a process start, a point in the iteration, an exit."""
KILLS = 10
SERVICE = {"shard_size": 1, "shard_lease_s": 3.0, "requeue_after_s": 3.0, "poll_s": 0.2, "max_attempts": 50}
"""One sample per shard (3 shards per sampled stage); a killed worker's shard is handed out again after 3 s."""


# --- claims, on SQLite and PostgreSQL -------------------------------------------------------------------------


def _iteration(store: Store) -> int:
    with store.session() as session:
        run = Run(name="r", config={})
        session.add(run)
        session.flush()
        iteration = Iteration(run_id=run.id, index=1, policy_version=0, constitution_hash="h")
        session.add(iteration)
        session.flush()
        ensure_claims(session, iteration.id, "generate", 2)
        return iteration.id


def test_a_shard_is_claimed_by_one_worker_until_its_claim_expires(store):
    iteration_id = _iteration(store)
    first = claim(store, iteration_id, "generate", 0, lease_s=60)
    assert first is not None and first.attempt == 1
    assert claim(store, iteration_id, "generate", 0, lease_s=60) is None  # held by a live worker
    assert claim(store, iteration_id, "generate", 1, lease_s=60) is not None  # another shard is free
    assert claim(store, iteration_id, "judge", 0, lease_s=60) is None  # never planned: not claimable
    with store.session() as session:  # the holder is presumed dead
        session.execute(update(ShardClaim).where(ShardClaim.id == first.claim_id).values(expires_at=0.0))
    second = claim(store, iteration_id, "generate", 0, lease_s=60)
    assert second is not None and second.attempt == 2
    with pytest.raises(ShardLost), store.session() as session:  # the first can no longer record its work
        first.fence(session)
    with store.session() as session:
        second.fence(session)
        session.add(StageRun(iteration_id=iteration_id, stage="generate", shard=0, wall_s=1.0))
    second.release()
    assert claim(store, iteration_id, "generate", 0, lease_s=60) is None  # done: a late message is ignored


def test_a_shard_cannot_be_recorded_done_twice(store):
    iteration_id = _iteration(store)
    with store.session() as session:
        session.add(StageRun(iteration_id=iteration_id, stage="generate", shard=1, wall_s=1.0))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(StageRun(iteration_id=iteration_id, stage="generate", shard=1, wall_s=2.0))
    with store.session() as session:
        assert done_shards(session, iteration_id, "generate") == {1}


# --- the service, with real processes ---------------------------------------------------------------------------


def _counts(run_dir: Path, env: dict[str, str]) -> dict[str, int]:
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


@pytest.fixture(scope="module")
def service_config(tmp_path_factory, tiny_model_dir, cai_home) -> Path:
    folder = tmp_path_factory.mktemp("service")
    return write_config(folder / "tiny.yaml", tiny_config(tiny_model_dir, cai_home, service=SERVICE))


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, service_config) -> tuple[Path, dict[str, int]]:
    """One iteration in one process (SQLite, the in-process broker), and its counts."""
    run_dir = tmp_path_factory.mktemp("embedded") / "run"
    result = run_cai("run", "--config", str(service_config), "--run-dir", str(run_dir), "--iterations", "1",
                     timeout=STEP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert "1 iteration(s) finished" in result.stderr
    counts = _counts(run_dir, {})
    assert counts["iterations_done"] == 1 and counts["duplicates"] == 0 and counts["pairs"] > 0, counts
    return run_dir, counts


@pytest.fixture(scope="module")
def uninterrupted(embedded_run) -> dict[str, int]:
    """The counts every interrupted run must match."""
    return dict(embedded_run[1])


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

    def worker(self) -> subprocess.Popen:
        return self._start("worker", "--queues", "infer,cpu,train")

    def counts(self) -> dict[str, int]:
        return _counts(self.run_dir, self.env)

    def progress(self) -> int:
        """Shards done so far (0 before the database has the tables)."""
        try:
            counts = self._query(lambda s: s.scalar(select(func.count()).select_from(StageRun)))
        except Exception:
            return 0
        return counts or 0

    def _query(self, fn):
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
            return self._query(lambda s: s.scalar(select(RunLease.pid)))
        except Exception:
            return None

    def log(self, process_number: int) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob(f"*-{process_number}.log")))


def _wait_exit(process: subprocess.Popen, what: str) -> int:
    try:
        return process.wait(STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{what} did not finish within {STEP_TIMEOUT_S} s")


def _stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.slow
def test_killed_workers_and_controller_lose_and_repeat_nothing(tmp_path, service_config, uninterrupted):
    """kill -9 of a worker or the controller at seeded random points of one iteration, then a restart of what was
    killed: the iteration completes with the uninterrupted run's counts and no duplicate row."""
    rng = random.Random(11)
    # Each kill lands once a seeded number of shards is done (an iteration has 12), after a random delay.
    points = sorted(rng.choices(range(0, 10), k=KILLS))
    with redis_server(tmp_path / "redis") as redis, postgres_database("cai_service_test") as database:
        service = Service(tmp_path, service_config, redis.url, database)
        processes = {"controller": service.controller(), "worker-a": service.worker(), "worker-b": service.worker()}
        try:
            for trial, point in enumerate(points):
                deadline = time.monotonic() + STEP_TIMEOUT_S
                while service.progress() < point:
                    assert processes["controller"].poll() is None, service.log(1)
                    assert time.monotonic() < deadline, f"trial {trial}: shard {point} not reached in time"
                    time.sleep(0.1)
                time.sleep(rng.uniform(0.0, 2.0))
                victim = rng.choice(sorted(processes))
                assert processes["controller"].poll() is None, f"the iteration ended before kill {trial + 1}"
                processes[victim].send_signal(signal.SIGKILL)
                processes[victim].wait(30)
                processes[victim] = service.controller() if victim == "controller" else service.worker()
            code = _wait_exit(processes["controller"], "the iteration after the kills")
            assert code == 0, service.log(service.started)
            counts = service.counts()
        finally:
            _stop(*processes.values())
    assert counts == uninterrupted


@pytest.mark.slow
def test_a_second_controller_is_refused_and_sigterm_stops_the_first(tmp_path, service_config):
    with redis_server(tmp_path / "redis") as redis, postgres_database("cai_service_test") as database:
        service = Service(tmp_path, service_config, redis.url, database)
        first = service.controller()  # no workers: it waits on its first stage's shards
        try:
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while service.lease_pid() != first.pid:
                assert first.poll() is None and time.monotonic() < deadline, service.log(1)
                time.sleep(0.1)
            for command in ("run", "iterate"):
                second = run_cai(command, "--config", str(service_config), "--run-dir", str(service.run_dir),
                                 env=service.env, timeout=STEP_TIMEOUT_S)
                assert second.returncode == 1, second.stderr
                assert f"is in use by pid {first.pid} on" in second.stderr
            first.send_signal(signal.SIGTERM)
            assert _wait_exit(first, "the controller after SIGTERM") == 143
            assert "stopped (SIGTERM) during stage generate of iteration 1" in service.log(1)
            assert service.lease_pid() is None  # released on the way out
        finally:
            _stop(first)


def _restart_mid_iteration(service: Service, restart, what: str) -> dict[str, int]:
    """One iteration by a controller and a worker, with `restart()` once two shards are done; the counts."""
    controller, worker = service.controller(), service.worker()
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while service.progress() < 2:
            assert controller.poll() is None and time.monotonic() < deadline, service.log(1)
            time.sleep(0.1)
        restart()
        assert _wait_exit(controller, f"the iteration after the {what} restart") == 0, service.log(1)
        return service.counts()
    finally:
        _stop(controller, worker)


@pytest.mark.slow
def test_a_redis_restart_mid_iteration_loses_nothing(tmp_path, service_config, uninterrupted):
    def restart() -> None:
        redis.stop()  # every queued message is lost with it
        time.sleep(2.0)
        redis.start()

    with redis_server(tmp_path / "redis") as redis, postgres_database("cai_service_test") as database:
        counts = _restart_mid_iteration(Service(tmp_path, service_config, redis.url, database), restart, "Redis")
    assert counts == uninterrupted


@pytest.mark.slow
def test_a_postgresql_restart_mid_iteration_loses_nothing(tmp_path, service_config, uninterrupted):
    """The database server stopped and started again while shards run: the controller waits for it (and says
    so), the workers' shards that failed meanwhile are claimed again, and the counts are the uninterrupted run's."""
    def restart() -> None:
        postgres.stop()
        time.sleep(3.0)  # several polls of the controller and the workers meet no database
        postgres.start()

    with redis_server(tmp_path / "redis") as redis, postgres_server() as postgres:
        service = Service(tmp_path, service_config, redis.url, postgres.url)
        counts = _restart_mid_iteration(service, restart, "PostgreSQL")
    logged = (service.run_dir / "cai.log").read_text()
    assert "the database is unreachable" in logged and "the database is back after" in logged
    assert counts == uninterrupted


@pytest.mark.slow
def test_the_daemon_waits_while_paused_and_stops_when_asked(tmp_path, service_config, embedded_run):
    run_dir, counts = embedded_run
    assert run_cai("pause", "--run-dir", str(run_dir), "--note", "maintenance").returncode == 0
    log = (tmp_path / "paused.log").open("w")
    daemon = subprocess.Popen(cai_command("run", "--config", str(service_config), "--run-dir", str(run_dir)),
                              cwd=ROOT, env=cai_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while "paused by an operator" not in (run_dir / "cai.log").read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "paused.log").read_text()
            time.sleep(0.1)
        assert run_cai("stop", "--run-dir", str(run_dir)).returncode == 0
        assert _wait_exit(daemon, "the paused daemon after `cai stop`") == 0
    finally:
        _stop(daemon)
    assert "0 iteration(s) finished (stopped by an operator)" in (tmp_path / "paused.log").read_text()
    assert _counts(run_dir, {}) == counts  # nothing ran while paused
    resumed = run_cai("resume", "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr


def test_bad_broker_settings_end_in_one_line_and_create_nothing(tmp_path, service_config):
    run_dir = tmp_path / "run"
    cases = [
        (("run", "--config", str(service_config), "--run-dir", str(run_dir)), {"CAI_BROKER_URL": "http://x"}, 2,
         "error: CAI_BROKER_URL='http://x' is not a Redis URL (redis://HOST:PORT/DB)"),
        (("run", "--config", str(service_config), "--run-dir", str(run_dir)),
         {"CAI_BROKER_URL": "redis://127.0.0.1:1/0"}, 1,
         "error: cannot reach the broker at CAI_BROKER_URL=redis://127.0.0.1:1/0: "),
        (("worker",), {}, 2, "error: cai worker needs CAI_BROKER_URL"),
        (("worker", "--queues", "infer,gpu"), {"CAI_BROKER_URL": "redis://127.0.0.1:1/0"}, 2,
         "error: --queues: unknown queue(s) gpu; choose from infer, train, cpu"),
    ]
    for args, env, code, line in cases:
        result = run_cai(*args, env=cai_env(**env), timeout=STEP_TIMEOUT_S)
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.returncode == code and len(lines) == 1 and lines[0].startswith(line), (args, result.stderr)
    assert not run_dir.exists()
