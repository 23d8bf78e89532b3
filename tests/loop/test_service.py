"""The service (`cai run` + `cai worker`) over real Redis and PostgreSQL, with real processes.

Shard claims are compare-and-set on both databases; one iteration run by separate worker processes while `kill -9`
hits a worker or the controller at seeded random points (at least 10 times) ends with exactly the counts of an
uninterrupted embedded run and no duplicate rows; a second controller is refused; the iteration survives a Redis
restart that loses every queued message.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import exists, select, text, update
from sqlalchemy.exc import IntegrityError

from loop.store import ShardClaim, StageRun
from loop.store.shards import ShardLost, claim, done_shards
from tests.loop.runs import ROOT, cai_command, cai_env, run_cai, tiny_config, write_config
from tests.loop.service_runs import STEP_TIMEOUT_S, Service, planned_stage, run_counts, stop, wait_exit
from tests.loop.services import postgres_database, postgres_server, redis_server

KILLS = 10
SERVICE = {"shard_size": 1, "shard_lease_s": 3.0, "requeue_after_s": 3.0, "poll_s": 0.2, "max_attempts": 50}
"""One sample per shard (3 shards per sampled stage); a killed worker's shard is handed out again after 3 s."""


# --- claims, on SQLite and PostgreSQL -------------------------------------------------------------------------


def test_a_shard_is_claimed_by_one_worker_until_its_claim_expires(store):
    iteration_id = planned_stage(store, "generate", 2)
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
    iteration_id = planned_stage(store, "generate", 2)
    with store.session() as session:
        session.add(StageRun(iteration_id=iteration_id, stage="generate", shard=1, wall_s=1.0))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(StageRun(iteration_id=iteration_id, stage="generate", shard=1, wall_s=2.0))
    with store.session() as session:
        assert done_shards(session, iteration_id, "generate") == {1}


# --- the service, with real processes ---------------------------------------------------------------------------


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
    counts = run_counts(run_dir, {})
    assert counts["iterations_done"] == 1 and counts["duplicates"] == 0 and counts["pairs"] > 0, counts
    return run_dir, counts


@pytest.fixture(scope="module")
def uninterrupted(embedded_run) -> dict[str, int]:
    """The counts every interrupted run must match."""
    return dict(embedded_run[1])


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
            code = wait_exit(processes["controller"], "the iteration after the kills")
            assert code == 0, service.log(service.started)
            counts = service.counts()
        finally:
            stop(*processes.values())
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
            assert wait_exit(first, "the controller after SIGTERM") == 143
            assert "stopped (SIGTERM) during stage generate of iteration 1" in service.log(1)
            assert service.lease_pid() is None  # released on the way out
        finally:
            stop(first)


def _restart_mid_iteration(service: Service, restart, what: str) -> dict[str, int]:
    """One iteration by a controller and a worker, with `restart()` once two shards are done; the counts."""
    controller, worker = service.controller(), service.worker()
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while service.progress() < 2:
            assert controller.poll() is None and time.monotonic() < deadline, service.log(1)
            time.sleep(0.1)
        restart()
        assert wait_exit(controller, f"the iteration after the {what} restart") == 0, service.log(1)
        return service.counts()
    finally:
        stop(controller, worker)


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


def _held_shard(service: Service, pid: int) -> tuple[int, int, str, int] | None:
    """(claim id, iteration id, stage, shard) of an unfinished sampled-stage shard that process `pid` holds now."""
    def look(session):
        done = exists().where(StageRun.iteration_id == ShardClaim.iteration_id, StageRun.stage == ShardClaim.stage,
                              StageRun.shard == ShardClaim.shard)
        return session.execute(select(ShardClaim.id, ShardClaim.iteration_id, ShardClaim.stage, ShardClaim.shard)
                               .where(ShardClaim.owner.like(f"%:{pid}:%"), ShardClaim.expires_at > time.time(),
                                      ShardClaim.stage.in_(("generate", "critique", "judge")), ~done)).first()
    try:
        row = service.query(look)
    except Exception:  # the tables are not there yet
        return None
    return tuple(row) if row else None


def _stalled_transactions(session) -> int:
    return session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND state = 'idle in transaction' AND state_change < now() - interval '0.3 s'"))


@pytest.mark.slow
def test_a_paused_worker_whose_shard_was_taken_over_records_nothing(tmp_path, service_config, uninterrupted):
    """A worker SIGSTOPped while it holds a shard, for longer than its claim: the shard is sent again, a second
    worker claims and records it; the first, resumed, finds at its fence that the claim is no longer its own and
    records nothing. The iteration ends with the uninterrupted run's counts."""
    with redis_server(tmp_path / "redis") as redis, postgres_database("cai_service_test") as database:
        service = Service(tmp_path, service_config, redis.url, database)
        controller, paused = service.controller(), service.worker()
        processes = [controller, paused]
        try:
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while True:
                assert controller.poll() is None and time.monotonic() < deadline, service.log(1)
                if (held := _held_shard(service, paused.pid)) is not None:
                    paused.send_signal(signal.SIGSTOP)
                    time.sleep(0.5)
                    # Still unfinished once stopped, and not stopped inside a transaction (its row locks would
                    # hold the second worker up until it wakes).
                    if _held_shard(service, paused.pid) == held and not service.query(_stalled_transactions):
                        break
                    paused.send_signal(signal.SIGCONT)
                time.sleep(0.02)
            claim_id, iteration_id, stage, shard = held
            processes.append(service.worker())
            while not service.query(lambda s: s.scalar(select(StageRun.id).where(
                    StageRun.iteration_id == iteration_id, StageRun.stage == stage, StageRun.shard == shard))):
                assert controller.poll() is None and time.monotonic() < deadline, service.log(1)
                time.sleep(0.1)
            taker = service.query(lambda s: s.scalar(select(ShardClaim.attempts).where(ShardClaim.id == claim_id)))
            assert taker >= 2  # claimed again while the first worker slept
            paused.send_signal(signal.SIGCONT)
            assert wait_exit(controller, "the iteration after the pause") == 0, service.log(1)
            counts = service.counts()
        finally:
            paused.send_signal(signal.SIGCONT)
            stop(*processes)
    paused_log = " ".join(service.log(2).split())  # as the terminal wrapped it
    assert "expired and was taken by another worker; this worker's result was not recorded" in paused_log
    assert "Traceback" not in paused_log
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
        assert wait_exit(daemon, "the paused daemon after `cai stop`") == 0
    finally:
        stop(daemon)
    assert "0 iteration(s) finished (stopped by an operator)" in (tmp_path / "paused.log").read_text()
    assert run_counts(run_dir, {}) == counts  # nothing ran while paused
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
