"""The `vllm-server` generation backend of an iteration: generators on the server, the publication of policy
versions as LoRA adapters, and the server's counters per stage.

Each function takes the settings it reads (`generation.server`, the judge's, the model's name), not the run config.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loop.config.run import JudgeSettings
from loop.store import Run, Store
from loop.store.queries import run_policies
from policies.serving.vllm_client import ServerError, VllmAdmin, VllmServerGenerator
from policies.serving.vllm_server import VllmServerSettings, served_model_name

log = logging.getLogger(__name__)

HITS, QUERIES, GENERATED = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
                            "vllm:generation_tokens_total")


def adapter_name(run_name: str, version: int, adapter: Path) -> str:
    """`RUN-vN-HASH`: the name a policy version is served under.

    The hash of the adapter's files keeps a re-created run (same name, same version, new weights) from being
    answered by the old adapter still loaded on a long-running server, or from its prefix-cache blocks.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in adapter.iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return f"{run_name}-v{version}-{digest.hexdigest()[:8]}"


def _version_of(name: str, run_name: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(run_name)}-v(\d+)-[0-9a-f]{{8}}", name)
    return int(match.group(1)) if match else None


def servers(server: VllmServerSettings) -> list[str]:
    """The policy's servers: `generation.server.url`, then `urls`, each once."""
    return list(dict.fromkeys([server.url, *server.urls]))


def shard_server(server: VllmServerSettings, shard: int) -> str:
    """The server a daemon's inference shard talks to: shards are spread round-robin over the servers."""
    listed = servers(server)
    return listed[shard % len(listed)]


def _admin(s: VllmServerSettings, url: str | None = None) -> VllmAdmin:
    return VllmAdmin(url or s.url, timeout_s=min(s.timeout_s, 60.0), retries=s.retries, backoff_s=s.backoff_s)


def _generator(s: VllmServerSettings, url: str, model: str, name: str, specials: Sequence[str] | None,
               on_restart: Callable[[], object] | None = None) -> VllmServerGenerator:
    return VllmServerGenerator(url, model, name=name, concurrency=s.concurrency, timeout_s=s.timeout_s,
                               retries=s.retries, backoff_s=s.backoff_s, specials=specials, on_restart=on_restart,
                               outage_s=s.outage_s)


def policy_generator(server: VllmServerSettings, model_name: str, run_name: str, version: int, adapter: Path | None,
                     url: str | None = None, *, specials: Sequence[str] | None = None) -> VllmServerGenerator:
    """π_`version` of the base model `model_name` on the server (`url`, default `server.url`): its adapter,
    loaded first if the server lacks it (a restarted server has none), or the base model for version 0.
    `specials`: the model's control-token strings, neutralised in what is sent (`control_tokens`)."""
    url = url or server.url
    if adapter is None:
        return _generator(server, url, served_model_name(model_name), f"{model_name}@v{version}", specials)
    model = adapter_name(run_name, version, adapter)

    def publish_adapter() -> None:
        if _admin(server, url).ensure_adapter(model, adapter.resolve()):
            log.info("published policy v%d as %s on %s", version, model, url)

    publish_adapter()
    # A restarted server has lost the adapter: it is loaded again before the interrupted call is repeated.
    generator = _generator(server, url, model, f"{model_name}@v{version}", specials, on_restart=publish_adapter)
    generator.http.answered = True  # it took the adapter: from now on a failed call means a restart, waited for
    return generator


def judge_generator(server: VllmServerSettings, judge: JudgeSettings, model_name: str,
                    url: str | None = None, *, specials: Sequence[str] | None = None) -> VllmServerGenerator:
    """The judge: the base model `model_name` (the reference, no adapter) on the policy's server (`url`, default
    `server.url`), or the configured judge model and server."""
    url = judge.url or url or server.url
    model = judge.model or served_model_name(model_name)
    return _generator(server, url, model, judge.model or model_name, specials)


@dataclass(frozen=True)
class ServedEvaluation:
    """The evaluation's policies and judge on the server (`loop.evaluation.models.ServedPolicies`): each
    version's eval answers come from its adapter there, loaded first if the server lacks it."""

    server: VllmServerSettings
    model_name: str
    run_name: str
    url: str | None
    specials: Sequence[str] | None
    judge_generator: VllmServerGenerator
    backend: str = "vllm-server"

    def policy(self, version: int, adapter: Path | None) -> VllmServerGenerator:
        return policy_generator(self.server, self.model_name, self.run_name, version, adapter, self.url,
                                specials=self.specials)

    def judge(self) -> VllmServerGenerator:
        return self.judge_generator


def publish(server: VllmServerSettings, store: Store, run_id: int, run_dir: Path) -> str | None:
    """Serve the run's current policy on every server and unload its adapters beyond the `keep_adapters` newest.

    Returns the current policy's served name (None for the base model).
    """
    with store.session() as session:
        run = session.get(Run, run_id)
        run_name, current = run.name, run.current_policy
        adapters = {p.version: run_dir / p.adapter_path for p in run_policies(session, run_id)
                    if p.adapter_path is not None}
    name = None
    for url in servers(server):
        name = _publish_on(_admin(server, url), run_dir, run_name, current, adapters, server.keep_adapters)
    return name


def _publish_on(admin: VllmAdmin, run_dir: Path, run_name: str, current: int, adapters: dict[int, Path],
                keep_adapters: int) -> str | None:
    others = [v for v in sorted(adapters, reverse=True) if v != current]
    keep = {current, *others[:keep_adapters - 1]}
    name = None
    if current in adapters:
        name = adapter_name(run_name, current, adapters[current])
        if admin.ensure_adapter(name, adapters[current].resolve()):
            log.info("published policy v%d as %s on %s", current, name, admin.url)
    root = run_dir.resolve()
    for served in admin.served().values():
        version = _version_of(served.name, run_name)
        # Only this run's adapters: same name pattern and a directory inside this run.
        if version is None or version in keep or not served.path or not Path(served.path).is_relative_to(root):
            continue
        admin.unload_adapter(served.name)
    return name


def server_counters(server: VllmServerSettings, judge_url: str | None) -> dict[str, float] | None:
    """The prefix-cache and generated-token counters, summed over the policy's servers and the judge's
    (`judge_url`, default `server.url`).

    The counters are server-wide: traffic from other clients of the same server is counted too.
    """
    urls = {*servers(server), judge_url or server.url}
    totals = dict.fromkeys((HITS, QUERIES, GENERATED), 0.0)
    try:
        for url in urls:
            metrics = VllmAdmin(url, timeout_s=10.0, retries=1, backoff_s=0.5).metrics()
            for key in totals:
                totals[key] += metrics.get(key, 0.0)
    except ServerError as exc:
        log.warning("cannot read the vLLM server's metrics: %s", exc)
        return None
    return totals


def serving_metrics(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Prefix-cache hit rate (share of prompt tokens served from the cache) and generated tokens/s of a stage."""
    queries, hits = after[QUERIES] - before[QUERIES], after[HITS] - before[HITS]
    generated = after[GENERATED] - before[GENERATED]
    metrics = {}
    if queries > 0:
        metrics["prefix_cache_hit_rate"] = hits / queries
    if generated > 0 and wall_s > 0:
        metrics["generated_tokens_per_s"] = generated / wall_s
    return metrics
