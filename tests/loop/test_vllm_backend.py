"""The vllm-server backend of an iteration against an in-process fake server: the same stages, policy
publication per version, keep-N unloading, republication after a restart, per-stage serving metrics."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from loop.config import RunConfig, resolve_paths
from loop.evaluation.gates import GATES
from loop.pipeline.context import IterationContext
from loop.pipeline.iteration import run_iteration
from loop.pipeline.stages import STAGES
from loop.pipeline.vllm_backend import adapter_name
from loop.store import Comparison, Policy, Run, Sample
from loop.store.database import open_run_store
from policies.serving.vllm_server import free_port
from tests.fake_vllm import FakeVllm, FakeVllmServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tiny_model_dir):
    fake = FakeVllm(base=tiny_model_dir.name)  # a directory model is served under its folder name
    with FakeVllmServer(fake) as server:
        fake.url = server.url
        yield fake


def served_config(tiny_model_dir, cai_home, url: str, **server) -> RunConfig:
    raw = RunConfig(
        home=cai_home, seed=0, threads=2,
        model={"name": str(tiny_model_dir), "device": "cpu"},
        prompts={"files": [ROOT / "data/prompts/harmful.jsonl", ROOT / "data/prompts/borderline.jsonl"],
                 "per_iteration": 3},
        generation={"backend": "vllm-server", "max_new_tokens": 6,
                    "server": {"url": url, "backoff_s": 0.01, "retries": 1, **server}},
        critique={"max_new_tokens": 6}, judge={"margin": 0.0},
        train={"preference": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-2}, "lora": {"r": 4, "alpha": 8}},
        gates={g.setting: None for g in GATES},
    )
    return resolve_paths(raw, ROOT)


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch):
    """These tests are about serving: the fake adapters below are not loadable weights, so the evaluate stage
    measures nothing and the open gates promote every candidate."""
    def skip(ctx: IterationContext) -> None:
        with ctx.store.session() as session:
            ctx.complete(session)
    monkeypatch.setitem(STAGES, "evaluate", replace(STAGES["evaluate"], run=skip))


def fake_train(ctx: IterationContext) -> None:
    """Stands in for training: a new adapter directory and its policy row, as the real stage writes them."""
    with ctx.store.session() as session:
        parent = session.get(Run, ctx.run_id).current_policy
        version = 1 + session.scalar(select(func.max(Policy.version)).where(Policy.run_id == ctx.run_id))
        rel = f"policies/v{version}"
        (ctx.run_dir / rel).mkdir(parents=True)
        (ctx.run_dir / rel / "adapter_model.safetensors").write_bytes(f"weights {version}".encode())
        (ctx.run_dir / rel / "adapter_config.json").write_text(json.dumps({"r": 4}))
        session.add(Policy(run_id=ctx.run_id, version=version, parent_version=parent, adapter_path=rel,
                           iteration_id=ctx.iteration_id, trainer="fake"))
        ctx.complete(session)


def models_used(fake: FakeVllm) -> set[str]:
    return {body["model"] for body in fake.chat_bodies()}


def test_an_iteration_runs_on_the_server_and_publishes_its_policy(fake, tiny_model_dir, cai_home, tmp_path):
    config = served_config(tiny_model_dir, cai_home, fake.url)
    summary = run_iteration(config, tmp_path)
    assert (summary["samples"], summary["critiques"], summary["comparisons"], summary["pairs"]) == (3, 3, 3, 3)
    assert summary["policy_version"] == "v1"
    # π_0 is the base model, which is also the judge (the reference).
    assert models_used(fake) == {fake.base}
    v1 = adapter_name(tmp_path.name, 1, tmp_path / "policies/v1")
    assert fake.adapters == {v1: str((tmp_path / "policies/v1").resolve())}
    serving = summary["serving"]
    assert set(serving) == {"generate", "critique", "judge"}
    assert serving["judge"]["prefix_cache_hit_rate"] == pytest.approx(0.5, abs=0.05)
    assert serving["generate"]["generated_tokens_per_s"] > 0
    store = open_run_store(tmp_path, write=True)
    with store.session() as s:
        assert {c.judge for c in s.scalars(select(Comparison))} == {config.model.name}
        assert all(x.response.startswith(f"[{fake.base}]") for x in s.scalars(select(Sample)))
    store.dispose()


def test_each_version_is_served_by_name_and_old_ones_are_unloaded(fake, tiny_model_dir, cai_home, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=fake_train))
    config = served_config(tiny_model_dir, cai_home, fake.url, keep_adapters=2)
    names = {}
    for iteration in (1, 2, 3):
        fake.requests.clear()
        run_iteration(config, tmp_path)
        names[iteration] = adapter_name(tmp_path.name, iteration, tmp_path / f"policies/v{iteration}")
        # Iteration i generates with π_{i-1}'s adapter; the judge is always the base model.
        expected = fake.base if iteration == 1 else names[iteration - 1]
        generation = {b["model"] for b in fake.chat_bodies() if not b.get("logprobs")}
        judging = {b["model"] for b in fake.chat_bodies() if b.get("logprobs")}
        assert (generation, judging) == ({expected}, {fake.base})
    assert set(fake.adapters) == {names[3], names[2]}  # keep 2: v1 was unloaded

    fake.adapters.clear()  # the server restarted: it serves the base model only
    fake.requests.clear()
    run_iteration(config, tmp_path)
    generation = {b["model"] for b in fake.chat_bodies() if not b.get("logprobs")}
    assert generation == {names[3]}  # republished before generating
    assert names[3] in fake.adapters


def test_a_promotion_stands_when_the_server_is_gone(tiny_model_dir, cai_home, tmp_path, monkeypatch, caplog):
    fake = FakeVllm(base=tiny_model_dir.name)
    with FakeVllmServer(fake) as server:
        config = served_config(tiny_model_dir, cai_home, server.url)

        def train_then_server_stops(ctx):
            fake_train(ctx)
            server.__exit__(None, None, None)

        monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=train_then_server_stops))
        with caplog.at_level(logging.WARNING):
            summary = run_iteration(config, tmp_path)
    assert summary["policy_version"] == "v1" and summary["status"] == "done"
    assert "promoted but could not be published" in caplog.text


def test_the_next_iteration_fails_clearly_without_a_server(tiny_model_dir, cai_home, tmp_path):
    from policies.serving.vllm_client import ServerUnavailableError

    config = served_config(tiny_model_dir, cai_home, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServerUnavailableError, match="cai serve"):
        run_iteration(config, tmp_path)


def test_shards_are_spread_over_the_servers_and_each_server_gets_the_policy(fake, tiny_model_dir, cai_home,
                                                                            tmp_path, monkeypatch):
    from loop.pipeline.vllm_backend import servers
    from loop.service.worker import ShardRunner
    from policies.serving import SamplingParams

    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=fake_train))
    second = FakeVllm(base=tiny_model_dir.name)
    with FakeVllmServer(second) as second_server:
        config = served_config(tiny_model_dir, cai_home, fake.url, urls=[second_server.url, fake.url])
        assert servers(config.generation.server) == [fake.url, second_server.url]  # each server once, `url` first
        run_iteration(config, tmp_path)  # v1 is promoted by the open gates and published on both servers
        v1 = adapter_name(tmp_path.name, 1, tmp_path / "policies/v1")
        assert set(fake.adapters) == set(second.adapters) == {v1}
        runner = ShardRunner()
        for shard, used in ((0, fake), (1, second), (2, fake)):
            fake.requests.clear()
            second.requests.clear()
            engines = runner.engines(config, tmp_path, tmp_path.name, 1, "policies/v1", shard)
            engines.policy.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=2))
            engines.judge.choice_logprobs([[{"role": "user", "content": "A or B?"}]], ["A", "B"])
            other = second if used is fake else fake
            assert (models_used(used), models_used(other)) == ({v1, fake.base}, set()), shard


def test_the_judge_can_be_another_model_on_another_server(fake, tiny_model_dir, cai_home, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=fake_train))
    judge = FakeVllm(base="judge-model")
    with FakeVllmServer(judge) as judge_server:
        config = served_config(tiny_model_dir, cai_home, fake.url)
        config = config.model_copy(update={"judge": config.judge.model_copy(
            update={"model": "judge-model", "url": judge_server.url})})
        summary = run_iteration(config, tmp_path)
    assert models_used(fake) == {fake.base} and models_used(judge) == {"judge-model"}
    assert all(b.get("logprobs") for b in judge.chat_bodies())
    assert not any(b.get("logprobs") for b in fake.chat_bodies())
    store = open_run_store(tmp_path, write=True)
    with store.session() as s:
        assert {c.judge for c in s.scalars(select(Comparison))} == {"judge-model"}
    store.dispose()
    assert summary["comparisons"] == 3


def test_a_separate_judge_model_with_the_transformers_backend(tiny_model_dir, cai_home, tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "train", replace(STAGES["train"], run=fake_train))
    config = served_config(tiny_model_dir, cai_home, "http://127.0.0.1:1")
    config = config.model_copy(update={
        "generation": config.generation.model_copy(update={"backend": "transformers"}),
        "judge": config.judge.model_copy(update={"model": str(tiny_model_dir)})})
    run_iteration(config, tmp_path)
    store = open_run_store(tmp_path, write=True)
    with store.session() as s:
        assert {c.judge for c in s.scalars(select(Comparison))} == {str(tiny_model_dir)}
    store.dispose()


def test_the_backend_is_switched_in_the_config_or_the_environment(tmp_path, monkeypatch):
    from loop.config import ConfigError, load_run_config

    path = tmp_path / "c.yaml"
    path.write_text(f"prompts:\n  files: [{ROOT / 'data/prompts/benign.jsonl'}]\n"
                    "generation:\n  backend: vllm-server\n  server:\n    url: http://127.0.0.1:8123\n")
    config = load_run_config(path)
    assert (config.generation.backend, config.generation.server.url) == ("vllm-server", "http://127.0.0.1:8123")
    monkeypatch.setenv("CAI_GENERATION__BACKEND", "transformers")
    assert load_run_config(path).generation.backend == "transformers"
    path.write_text(path.read_text() + "judge:\n  url: http://127.0.0.1:9000\n")
    with pytest.raises(ConfigError, match="judge.url is only used with generation.backend: vllm-server"):
        load_run_config(path)


def test_a_restarted_server_is_waited_for_and_given_the_adapter_again(tmp_path, caplog):
    """The server goes away before a stage's call and comes back on the same port without the adapters it had:
    the call waits for /health, loads the policy's adapter again and is repeated, and the answer is the policy's."""
    import threading
    import time

    from loop.pipeline.vllm_backend import policy_generator
    from policies.serving import SamplingParams
    from policies.serving.vllm_server import VllmServerSettings

    adapter = tmp_path / "v1"
    adapter.mkdir()
    first = FakeVllm(base="base")
    server = FakeVllmServer(first).__enter__()
    port = int(server.url.rsplit(":", 1)[1])
    settings = VllmServerSettings(url=server.url, retries=1, backoff_s=0.01, outage_s=30)
    generator = policy_generator(settings, "base", "run", 1, adapter)
    assert len(first.adapters) == 1
    server.__exit__(None, None, None)  # gone, and with it every loaded adapter

    restarted, servers = FakeVllm(base="base"), []

    def come_back() -> None:
        time.sleep(1.0)
        servers.append(FakeVllmServer(restarted, port).__enter__())

    threading.Thread(target=come_back, daemon=True).start()
    with caplog.at_level(logging.INFO):
        reply = generator.generate([[{"role": "user", "content": "Say hi."}]], SamplingParams(8))
    servers[0].__exit__(None, None, None)
    assert list(restarted.adapters) == [generator.model] and generator.model.startswith("run-v1-")
    assert f"[{generator.model}]" in reply[0]  # answered by the adapter, after it was loaded again
    assert "waiting for it to come back" in caplog.text and "is back; repeating the call" in caplog.text
    settings_without = settings.model_copy(update={"outage_s": 0.0})
    quick = policy_generator(settings_without, "base", "run", 0, None)
    with pytest.raises(Exception, match="Is the vLLM server running"):
        quick.generate([[{"role": "user", "content": "Say hi."}]], SamplingParams(8))  # nothing to wait for
