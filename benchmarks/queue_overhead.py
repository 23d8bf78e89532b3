"""The service's queue overhead: what sending work as shard messages through Redis costs, next to the work.

1. No-op actors: N messages through the local Redis broker to a worker thread (send → processed), per message.
2. Real stage shards: the generate, critique and judge stages of one iteration of the config's model, run by the
   controller as shards through Redis to a worker thread (the same code as `cai run` + `cai worker`). The
   overhead of a stage is its span (first message sent → last shard seen done by the controller) less the time
   the stage functions themselves took (their StageRun walls): messages, claims, heartbeats, polling.

The last line is machine-readable:

    per_message_ms=<no-op round trip per message> overhead_pct=<overhead ÷ stage work, real shards, in %>

Usage: python benchmarks/queue_overhead.py [--config configs/quickstart.yaml] [--per-iteration 16]
       [--shard-size 8] [--messages 500] [--broker redis://127.0.0.1:6379/15] [--stages generate,critique,judge]
Needs the project's set-up (`make setup`) and a Redis server (its database is flushed: pick an unused one).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from pathlib import Path

import dramatiq
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
SHARDED = ("generate", "critique", "judge")


def noop_round_trip(broker_url: str, messages: int) -> float:
    """Milliseconds per no-op message, sent and processed by one worker thread over Redis."""
    from loop.service.broker import make_broker

    broker = make_broker(broker_url)
    broker.broker.client.flushdb()
    done = threading.Semaphore(0)
    counter = dramatiq.actor(lambda: done.release(), actor_name="bench_counter", queue_name="cpu",
                             broker=broker.broker, time_limit=60_000, max_retries=0)
    worker = broker.worker({"cpu"})
    worker.queue_prefetch = 64  # the overhead of a message, not of a prefetch of one
    worker.start()
    try:
        counter.send()
        done.acquire(timeout=60)  # warm: connections and the consumer are up
        started = time.perf_counter()
        for _ in range(messages):
            counter.send()
        for _ in range(messages):
            if not done.acquire(timeout=120):
                raise SystemExit("no-op messages were not processed within 120 s")
        return (time.perf_counter() - started) * 1000 / messages
    finally:
        worker.stop()
        broker.close()


def real_shards(broker_url: str, config_path: Path, per_iteration: int, shard_size: int,
                stages: tuple[str, ...]) -> tuple[float, float]:
    """(Σ stage spans, Σ stage-function walls) in seconds over `stages` (sharded ones) of one iteration."""
    from loop.config import load_run_config
    from loop.service.broker import make_broker
    from loop.service.controller import Controller
    from loop.store import StageRun
    from loop.store.database import open_run_store
    from loop.store.lease import acquire
    from policies.runtime import configure_threads

    config = load_run_config(config_path)
    config = config.model_copy(update={
        "prompts": config.prompts.model_copy(update={"per_iteration": per_iteration}),
        "service": config.service.model_copy(update={"shard_size": shard_size})})
    configure_threads(config.threads)
    broker = make_broker(broker_url)
    broker.broker.client.flushdb()
    worker = broker.worker()
    worker.start()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        controller = Controller(config, run_dir, broker)
        store = open_run_store(run_dir, write=True)
        try:
            from loop.config import save_run_config
            from loop.pipeline.iteration import validate_inputs

            constitution = validate_inputs(config)
            controller.run_name = run_dir.name
            with acquire(store, run_dir.name) as lease:
                save_run_config(config, run_dir / "config.yaml")
                _, iteration_id, index, _ = controller._open(store, constitution)
                spans = 0.0
                for stage in stages:
                    started = time.perf_counter()
                    controller._stage(store, lease, iteration_id, index, stage)
                    spans += time.perf_counter() - started
                    print(f"  {stage}: {time.perf_counter() - started:.2f} s", flush=True)
            with store.session() as session:
                walls = session.scalar(select(func.sum(StageRun.wall_s)).where(StageRun.stage.in_(stages)))
                shards = session.scalar(select(func.count()).select_from(StageRun))
            print(f"  {shards} shards", flush=True)
        finally:
            worker.stop()
            broker.close()
            store.dispose()
    return spans, walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--per-iteration", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--stages", default=",".join(SHARDED),
                        help="Comma-separated, in order, from generate,critique,judge (a prefix of them).")
    args = parser.parse_args()
    stages = tuple(s.strip() for s in args.stages.split(","))
    if stages != SHARDED[:len(stages)]:
        parser.error(f"--stages must be a prefix of {','.join(SHARDED)}")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; broker {args.broker}", flush=True)
    per_message_ms = noop_round_trip(args.broker, args.messages)
    print(f"no-op actors: {per_message_ms:.3f} ms per message ({args.messages} messages)", flush=True)
    print(f"real shards ({args.config.name}, {args.per_iteration} prompts, {args.shard_size} per shard):", flush=True)
    spans, walls = real_shards(args.broker, args.config, args.per_iteration, args.shard_size, stages)
    overhead_pct = 100 * (spans - walls) / walls
    print(f"stage spans {spans:.2f} s, stage work {walls:.2f} s: overhead {spans - walls:.2f} s", flush=True)
    print(f"per_message_ms={per_message_ms:.3f} overhead_pct={overhead_pct:.2f}")


if __name__ == "__main__":
    main()
