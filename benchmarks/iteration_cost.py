"""Where one quickstart iteration's time goes, on each backend, and what a later run no longer pays.

Runs the first iteration of `configs/quickstart.yaml` three times, each in a fresh run folder, in one process:

1. transformers backend, an empty result cache (the first run on a machine);
2. transformers backend again, a second run on the same cache (what every later run pays);
3. the vLLM server (started here, or --url), an empty cache: the served evaluation too.

For each it prints every stage's wall time and share of the iteration; inside the evaluate and train stages the
timed tasks (answers, refusal scoring, verdicts, KL, violations; the trainer's time before its first step, its
steps and its time after the last); and the cache hits. Then K = 8 sampled answers per prompt against K = 1 on
the server (one request with n = K). The cache lives under a scratch CAI_HOME that links the real one's
converted models and vLLM environment, so nothing of yours is cleared. The last line is machine-readable:

    evaluate_share=<run 2> evaluate_share_cold=<run 1> served_speedup=<(generate+evaluate) run 1 / run 3>
    k8_over_k1=<time of K=8 / K=1> base_answers_from_cache=<run 2> judge_scores_cached=<run 2: 0|1>

(one line). Targets (issue: fast iterations): evaluate_share at most 0.30, served_speedup at least 3,
k8_over_k1 at most 3, and run 2 reading the base's answers and the judge's scores from the cache.

Usage: python benchmarks/iteration_cost.py [--url http://127.0.0.1:8000] [--prompts 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "quickstart.yaml"


@dataclass
class Task:
    name: str
    started: float
    ended: float = 0.0
    advances: list[float] = field(default_factory=list)


class TimingReporter:
    """A progress reporter that keeps when each task started, advanced and ended."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = Task(description, time.perf_counter())
        self.tasks.append(task)
        try:
            yield lambda n: task.advances.append(time.perf_counter())
        finally:
            task.ended = time.perf_counter()


@dataclass
class Measured:
    label: str
    wall_s: float
    stages: dict[str, float]
    tasks: list[Task]
    metrics: dict[str, float]

    def share(self, *stages: str) -> float:
        return sum(self.stages.get(s, 0.0) for s in stages) / self.wall_s


def scratch_home() -> Path:
    """A CAI_HOME with an empty cache that reuses the real home's converted models and vLLM environment."""
    real = Path(os.environ.get("CAI_HOME", "~/.cache/cai")).expanduser()
    home = Path(tempfile.mkdtemp(prefix="cai-iteration-cost-"))
    for shared in ("models", "vllm-venv"):
        (real / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(real / shared)
    return home


def one_iteration(label: str, home: Path, **environment: str) -> Measured:
    from loop.config import load_run_config
    from loop.pipeline.iteration import run_iteration

    os.environ.update({"CAI_HOME": str(home), **environment})
    try:
        config = load_run_config(CONFIG)
    finally:
        for name in environment:
            os.environ.pop(name)
    reporter = TimingReporter()
    started = time.perf_counter()
    summary = run_iteration(config, Path(tempfile.mkdtemp(prefix="cai-iteration-cost-run-")), reporter)
    wall = time.perf_counter() - started
    metrics = (summary.get("evaluation") or {}).get("metrics", {})
    return Measured(label, wall, summary["wall_s"], reporter.tasks, metrics)


def report(m: Measured) -> None:
    print(f"\n{m.label}: {m.wall_s:.0f} s whole iteration")
    print(f"  {'stage':<10}{'wall s':>9}{'share':>8}")
    for stage, seconds in m.stages.items():
        print(f"  {stage:<10}{seconds:>9.1f}{seconds / m.wall_s:>8.0%}")
    print("  timed tasks:")
    for task in m.tasks:
        line = f"    {task.name:<42}{task.ended - task.started:>7.1f} s"
        if task.name.startswith("train") and task.advances:
            before, after = task.advances[0] - task.started, task.ended - task.advances[-1]
            steps = task.advances[-1] - task.advances[0]
            line += (f"  (to the first step {before:.1f} s, {len(task.advances) - 1} more steps {steps:.1f} s, "
                     f"after the last {after:.1f} s: fixed {before + after:.1f} s)")
        print(line)
    print(f"  from the cache: base answers {m.metrics.get('base_answers_from_cache', 0):.0f}, judge's refusal "
          f"scores {'yes' if m.metrics.get('refusal_judge_scores_cached') else 'no'}")


def samples_cost(url: str, prompts: int) -> tuple[float, float]:
    """Seconds for K = 1 and K = 8 sampled answers to the same prompts on the server (64 new tokens)."""
    from loop.prompts import load_prompts, select_prompts
    from policies.models import DEFAULT_MODEL
    from policies.serving import SamplingParams
    from policies.serving.vllm_client import VllmServerGenerator

    pool = load_prompts(sorted((ROOT / "data" / "prompts").glob("*.jsonl")))
    conversations = [[{"role": "user", "content": p.prompt}] for p in select_prompts(pool, prompts, seed=1,
                                                                                     iteration=1)]
    served = VllmServerGenerator(url, DEFAULT_MODEL, concurrency=16)
    served.generate([[{"role": "user", "content": "Say hello."}]], SamplingParams(64, temperature=1.0))  # warm-up
    timings = []
    for k in (1, 8):
        started = time.perf_counter()
        served.generate(conversations, SamplingParams(64, temperature=1.0, seed=k), samples=k)
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running vLLM server serving the model as smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16, help="prompts of the K = 1 / K = 8 comparison")
    args = parser.parse_args()

    from loop.cli.output import setup_logging
    from policies.models import DEFAULT_MODEL, resolve_model_dir
    from policies.serving.vllm_env import ensure_vllm_env
    from policies.serving.vllm_server import VllmServer, VllmServerSettings, free_port

    setup_logging(None)
    print(f"configs/quickstart.yaml, first iteration; {os.cpu_count()} cores, no GPU", flush=True)
    home = scratch_home()
    cold = one_iteration("1. transformers, empty cache", home)
    report(cold)
    warm = one_iteration("2. transformers, a second run on the same cache", home)
    report(warm)

    server, url = None, args.url
    if url is None:
        settings = VllmServerSettings(url=f"http://127.0.0.1:{free_port()}", kv_cache_gib=2)
        model_dir = resolve_model_dir(DEFAULT_MODEL, home)
        server = VllmServer.start(ensure_vllm_env(home), model_dir, served_name=DEFAULT_MODEL, settings=settings,
                                  lora_rank=16, log_path=home / "vllm.log")
        print(f"\nvLLM server ready in {server.wait_ready(settings.start_timeout_s):.0f} s", flush=True)
        url = server.url
    try:
        served = one_iteration("3. vLLM server, empty cache", scratch_home(), CAI_GENERATION__BACKEND="vllm-server",
                               CAI_GENERATION__SERVER__URL=url)
        report(served)
        k1, k8 = samples_cost(url, args.prompts)
    finally:
        if server is not None:
            server.stop()
    print(f"\nK samples per prompt on the server, {args.prompts} prompts, 64 new tokens: K=1 {k1:.1f} s, "
          f"K=8 {k8:.1f} s ({k8 / k1:.2f}x for 8x the answers)")
    speedup = (cold.stages.get("generate", 0) + cold.stages.get("evaluate", 0)) / (
        served.stages.get("generate", 0) + served.stages.get("evaluate", 0))
    print(f"evaluate_share={warm.share('evaluate'):.2f} evaluate_share_cold={cold.share('evaluate'):.2f} "
          f"served_speedup={speedup:.2f} k8_over_k1={k8 / k1:.2f} "
          f"base_answers_from_cache={warm.metrics.get('base_answers_from_cache', 0):.0f} "
          f"judge_scores_cached={warm.metrics.get('refusal_judge_scores_cached', 0):.0f}")


if __name__ == "__main__":
    main()
