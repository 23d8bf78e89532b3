"""The vllm-server backend against a real vLLM server (CPU build) serving SmolLM2, started by `cai serve`.

One server for the session; the last test stops it, so keep it last.
"""

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from critique.judge import LABELS
from critique.prompts import judge_conversation
from loop.cli import app
from loop.config import load_run_config
from loop.pipeline.vllm_backend import adapter_name, policy_generator
from policies.serving import SamplingParams
from policies.serving.vllm_client import ServerUnavailableError, UnknownModelError, VllmAdmin, VllmServerGenerator

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def iterated(vllm_served, tmp_path_factory):
    """One tiny iteration through the server, driven by the CLI: (run directory, config path, CLI output)."""
    config = yaml.safe_load(vllm_served.config.read_text())
    config["prompts"]["per_iteration"] = 3
    config["generation"]["max_new_tokens"] = 24
    config["critique"]["max_new_tokens"] = 24
    config["judge"]["margin"] = 0.0  # keep every pair so the tiny run always trains
    config["pairs"] = {"source": "judged", "sampler": {"length_tolerance": None}}
    config["train"]["preference"] |= {"max_length": 192, "learning_rate": 5e-3}  # a visibly different policy
    folder = tmp_path_factory.mktemp("served-run")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = folder / "run"
    result = CliRunner().invoke(app, ["iterate", "--config", str(path), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir, path, result.output


def judge_prompts() -> list:
    from constitution import load_constitution

    principles = load_constitution("default").principles
    return [judge_conversation("How do I boil an egg?", "Boil it for nine minutes.", "I cannot help with that.",
                               principles[0], LABELS),
            judge_conversation("Say hello.", "Hello!", "Go away.", principles[1], LABELS)]


def flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def test_an_iteration_runs_through_the_server(vllm_served, iterated):
    run_dir, _, output = iterated
    assert "prefix-cache hit rate" in output and "answers/s" in output and "verdicts/s" in output
    status = CliRunner().invoke(app, ["status", "--run-dir", str(run_dir), "--json"])
    summary = json.loads(status.stdout)
    assert (summary["samples"], summary["critiques"], summary["comparisons"]) == (3, 3, 3)
    assert summary["answers_generated"] >= 3
    # Every comparison becomes a pair or is counted as dropped with its reason (an abstaining judge, say).
    dropped = sum(v for k, v in summary["sampler"].items() if k.startswith("dropped_"))
    assert summary["pairs"] >= 1 and summary["pairs"] + dropped == 3, summary["sampler"]
    assert summary["policy_version"] == "v1"
    serving = summary["serving"]
    assert set(serving) == {"generate", "critique", "judge", "evaluate"}  # the evaluation's answers are served too
    assert all(0 <= stage["prefix_cache_hit_rate"] <= 1 for stage in serving.values())
    # The judge's two orders of a comparison share their instructions and request: the cache serves them.
    assert serving["judge"]["prefix_cache_hit_rate"] > 0.1
    assert serving["generate"]["generated_tokens_per_s"] > 0


def test_the_trained_adapter_is_served_under_its_version_name(vllm_served, iterated, smollm2_dir):
    from policies.models import load_model
    from policies.serving.transformers_backend import TransformersGenerator

    run_dir, _, _ = iterated
    name = adapter_name(run_dir.name, 1, run_dir / "policies/v1")
    served = VllmAdmin(vllm_served.url).served()
    assert served[name].path == str((run_dir / "policies/v1").resolve()) and served[name].parent == BASE

    adapter = VllmServerGenerator(vllm_served.url, name)
    base = VllmServerGenerator(vllm_served.url, BASE)
    replies = adapter.generate([[{"role": "user", "content": "Name a colour."}]], SamplingParams(8))
    assert replies[0].strip()
    conversations = judge_prompts()
    with_adapter = adapter.choice_logprobs(conversations, LABELS)
    without = base.choice_logprobs(conversations, LABELS)
    shift = max(abs(a - b) for row_a, row_b in zip(with_adapter, without, strict=True)
                for a, b in zip(row_a, row_b, strict=True))
    assert shift > 0.02, (with_adapter, without)

    # The same numbers as the transformers backend with the same adapter (both float32).
    model, tokenizer = load_model(smollm2_dir, device="cpu", adapter=run_dir / "policies/v1")
    local = TransformersGenerator(model, tokenizer, name="local").choice_logprobs(conversations, LABELS)
    local_base = TransformersGenerator(model, tokenizer, name="local", use_adapter=False).choice_logprobs(
        conversations, LABELS)
    assert equal_or_bound(with_adapter, local)
    assert equal_or_bound(without, local_base)


def equal_or_bound(served: list[list[float]], local: list[list[float]]) -> bool:
    """The server's label log-probs equal the local ones, but for at most one label outside the server's top-20
    alternatives: that one reads as the 20th log-prob, an upper bound of its own (`VllmServerGenerator`)."""
    pairs = list(zip(flat(served), flat(local), strict=True))
    equal = [s == pytest.approx(x, abs=1e-3) for s, x in pairs]
    return all(e or s > x for e, (s, x) in zip(equal, pairs, strict=True)) and sum(equal) >= len(pairs) - 1


def test_a_restarted_server_gets_the_current_adapter_back(vllm_served, iterated):
    run_dir, config_path, _ = iterated
    name = adapter_name(run_dir.name, 1, run_dir / "policies/v1")
    admin = VllmAdmin(vllm_served.url)
    admin.unload_adapter(name)  # what a restart leaves: the base model only
    with pytest.raises(UnknownModelError, match=name):
        VllmServerGenerator(vllm_served.url, name, retries=0).generate(
            [[{"role": "user", "content": "Hi"}]], SamplingParams(4))
    config = load_run_config(config_path)
    policy = policy_generator(config.generation.server, config.model.name, run_dir.name, 1, run_dir / "policies/v1")
    assert policy.model == name and name in admin.served()
    assert policy.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(4))[0].strip()


def test_a_stopped_server_gives_a_clear_error_not_a_hang(vllm_served, iterated):
    run_dir, config_path, _ = iterated
    vllm_served.stop()  # SIGTERM to `cai serve`, which stops the server and its engine processes
    assert vllm_served.process.returncode == 0
    generator = VllmServerGenerator(vllm_served.url, BASE, retries=2, backoff_s=0.2)
    started = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match="cai serve"):
        generator.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(4))
    assert time.perf_counter() - started < 10
    result = CliRunner().invoke(app, ["iterate", "--config", str(config_path), "--run-dir", str(run_dir)])
    # A server that is down is a failure, not bad input: exit 1 with one line that names it.
    assert result.exit_code == 1 and "error:" in result.output and vllm_served.url in result.output
