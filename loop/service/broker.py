"""The daemon's message broker, made in this one place: Redis (CAI_BROKER_URL=redis://HOST:PORT/DB) for the
distributed service, else dramatiq's in-process StubBroker, consumed by a worker thread of `cai run` itself.

Messages only say "work on this shard"; correctness lives in the database (`loop.store.shards`): dramatiq's Redis
broker delivers at least once and requeues a killed worker's messages late, so a message may repeat or be lost,
and the controller re-sends what is neither done nor held. Every actor states its time limit and retry policy;
none of dramatiq's defaults (20 retries, backoff up to 7 days, 10-minute limit) is left implicit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Retries, ShutdownNotifications, TimeLimit

from loop.pipeline.names import Queue

log = logging.getLogger(__name__)

BROKER_URL = "CAI_BROKER_URL"
QUEUES = tuple(Queue)
"""Every stage's shards go to one of these (`loop.pipeline.stages.Stage.queue`)."""
HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class ActorPolicy:
    time_limit_ms: int
    max_retries: int
    min_backoff_ms: int = 1000
    max_backoff_ms: int = 30_000


POLICIES = {
    # A shard of inference on a slow CPU or a busy server; a worker that dies mid-way is covered by the claim.
    Queue.INFER: ActorPolicy(time_limit_ms=6 * HOUR_MS, max_retries=2),
    # Training resumes from its last checkpoint, so a retry loses at most one save interval.
    Queue.TRAIN: ActorPolicy(time_limit_ms=48 * HOUR_MS, max_retries=2),
    Queue.CPU: ActorPolicy(time_limit_ms=1 * HOUR_MS, max_retries=2),
}
"""Retries are for passing failures (a database or server blip); the controller gives up on a shard after
`service.max_attempts` claims and fails the iteration with its last error."""


class BrokerURLError(ValueError):
    """CAI_BROKER_URL is not a Redis URL."""


class BrokerUnreachable(RuntimeError):
    """Nothing answers at CAI_BROKER_URL."""


class ShardFailed(RuntimeError):
    """A shard failed `service.max_attempts` times: the iteration cannot go on without a fix. Defined here, with
    the broker's other failures, so that the CLI can classify it without importing the controller (and torch)."""


def broker_url() -> str | None:
    return os.environ.get(BROKER_URL) or None


@dataclass
class Broker:
    """A dramatiq broker with the shard actor of each queue (and a no-op actor, for the overhead benchmark)."""

    broker: dramatiq.Broker
    shard_actors: dict[str, dramatiq.Actor]
    noop: dramatiq.Actor

    @property
    def embedded(self) -> bool:
        return isinstance(self.broker, StubBroker)

    def send_shard(self, queue: str, run_dir: Path, run_name: str, iteration_id: int, stage: str,
                   shard: int) -> None:
        self.shard_actors[queue].send(str(run_dir), run_name, iteration_id, stage, shard)

    def worker(self, queues: set[str] | None = None) -> dramatiq.Worker:
        """One consuming worker thread (a process holds one model; more processes, more throughput). A trainer
        takes one message at a time (prefetch 1): a second training message must stay free for another node."""
        worker = dramatiq.Worker(self.broker, queues=queues, worker_threads=1, worker_timeout=200)
        if queues is None or Queue.TRAIN in queues:
            worker.queue_prefetch = 1
            worker.delay_prefetch = 1
        return worker

    def close(self) -> None:
        self.broker.close()


def _run_shard(run_dir: str, run_name: str, iteration_id: int, stage: str, shard: int) -> None:
    from loop.service.worker import runner

    runner().run(Path(run_dir), run_name, iteration_id, stage, shard)


def _noop(*args) -> None:
    return None


def make_broker(url: str | None = None) -> Broker:
    """The broker for CAI_BROKER_URL (or `url`), else an in-process one, with its actors declared."""
    url = url or broker_url()
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Retries()]
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise BrokerURLError(f"{BROKER_URL}={url!r} is not a Redis URL (redis://HOST:PORT/DB)")
        broker: dramatiq.Broker = RedisBroker(url=url, middleware=middleware)
        try:
            broker.client.ping()
        except Exception as exc:  # redis.ConnectionError, a refused or unresolvable host
            raise BrokerUnreachable(f"cannot reach the broker at {BROKER_URL}={url}: {exc}") from exc
    else:
        broker = StubBroker(middleware=middleware)
        broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    actors = {}
    for queue in QUEUES:
        policy = POLICIES[queue]
        actors[queue] = dramatiq.actor(
            _run_shard, actor_name=f"cai_{queue.value}_shard", queue_name=queue.value, broker=broker,
            time_limit=policy.time_limit_ms, max_retries=policy.max_retries, min_backoff=policy.min_backoff_ms,
            max_backoff=policy.max_backoff_ms, max_age=None, notify_shutdown=True)
    noop = dramatiq.actor(_noop, actor_name="cai_noop", queue_name=Queue.CPU.value, broker=broker, time_limit=60_000,
                          max_retries=0, max_age=None, notify_shutdown=True)
    return Broker(broker, actors, noop)
