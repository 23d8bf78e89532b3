"""The vLLM server client against an in-process fake server: requests, retries, errors, log-prob mapping."""

import json
import time
from pathlib import Path

import httpx
import pytest

from policies.serving import SamplingParams
from policies.serving.vllm_client import (
    ServerError,
    ServerUnavailableError,
    UnknownModelError,
    VllmAdmin,
    VllmServerGenerator,
    parse_prometheus,
)
from policies.serving.vllm_server import free_port
from tests.fake_vllm import FakeVllm, FakeVllmServer

FAST = {"backoff_s": 0.01, "timeout_s": 5.0}


@pytest.fixture
def fake():
    fake = FakeVllm(base="base-model")
    with FakeVllmServer(fake) as server:
        fake.url = server.url
        yield fake


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_replies_come_back_in_input_order_and_stripped(fake):
    generator = VllmServerGenerator(fake.url, "base-model", concurrency=2, **FAST)
    seen = []
    replies = generator.generate([user("zeta"), user("alpha"), user("mid")], SamplingParams(8), seen.append)
    assert replies == [f"[base-model] reply 0 seed=None to: {w}" for w in ("zeta", "alpha", "mid")]
    assert sum(seen) == 3
    body = fake.chat_bodies()[0]
    assert (body["max_tokens"], body["temperature"], body["n"]) == (8, 0.0, 1)
    assert "continue_final_message" not in body


def test_requests_are_sent_in_prefix_order(fake):
    generator = VllmServerGenerator(fake.url, "base-model", concurrency=1, **FAST)
    prompts = ["shared long prefix / b", "other", "shared long prefix / a", "shared"]
    generator.generate([user(p) for p in prompts], SamplingParams(4))
    # With one request at a time the arrival order is the dispatch order: conversations starting alike adjoin.
    assert [b["messages"][0]["content"] for b in fake.chat_bodies()] == sorted(prompts)


def test_a_final_assistant_message_is_continued(fake):
    generator = VllmServerGenerator(fake.url, "base-model", **FAST)
    generator.generate([[*user("Q"), {"role": "assistant", "content": "The answer is"}]], SamplingParams(4))
    body = fake.chat_bodies()[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_identical_conversations_become_one_request_with_n_samples(fake):
    generator = VllmServerGenerator(fake.url, "base-model", **FAST)
    sampled = generator.generate([user("same")] * 3 + [user("other")], SamplingParams(4, temperature=0.7, seed=5))
    bodies = sorted(fake.chat_bodies(), key=lambda b: b["n"])
    assert [b["n"] for b in bodies] == [1, 3] and all(b["seed"] == 5 for b in bodies)
    assert len(set(sampled[:3])) == 3  # three different samples, one per copy
    fake.requests.clear()
    greedy = generator.generate([user("same")] * 3, SamplingParams(4))
    assert [b["n"] for b in fake.chat_bodies()] == [1] and len(set(greedy)) == 1


def test_concurrency_is_bounded(fake):
    fake.delay_s = 0.05
    generator = VllmServerGenerator(fake.url, "base-model", concurrency=3, **FAST)
    generator.generate([user(str(i)) for i in range(12)], SamplingParams(2))
    assert 2 <= fake.max_in_flight <= 3


def test_choice_logprobs_map_tokens_and_floor_absent_choices(fake):
    generator = VllmServerGenerator(fake.url, "base-model", **FAST)
    seen = []
    scores = generator.choice_logprobs([user("judge this"), user("and this")], ["A", "B", "C"], seen.append)
    # "C" is not among the returned alternatives: it gets the lowest returned log-prob (an upper bound).
    assert scores == [[-0.4, -2.5, -2.5]] * 2 and sum(seen) == 2
    body = fake.chat_bodies()[0]
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"]) == (1, True, 20)


def test_multi_token_choices_are_refused(fake):
    generator = VllmServerGenerator(fake.url, "base-model", **FAST)
    with pytest.raises(ValueError, match="must be 1 token"):
        generator.choice_logprobs([user("x")], ["Response A", "B"])


def test_transient_failures_are_retried(fake):
    fake.fail_next = 2
    generator = VllmServerGenerator(fake.url, "base-model", retries=3, **FAST)
    assert generator.generate([user("hello")], SamplingParams(4)) == ["[base-model] reply 0 seed=None to: hello"]
    assert len(fake.chat_bodies()) == 3


def test_persistent_failures_end_in_a_clear_error(fake):
    fake.fail_next = 100
    generator = VllmServerGenerator(fake.url, "base-model", retries=2, **FAST)
    with pytest.raises(ServerUnavailableError, match=r"after 3 attempts: HTTP 503: engine is starting"):
        generator.generate([user("hello")], SamplingParams(4))


def test_a_server_that_is_down_gives_a_clear_error_quickly():
    url = f"http://127.0.0.1:{free_port()}"
    generator = VllmServerGenerator(url, "base-model", retries=2, **FAST)
    started = time.perf_counter()
    with pytest.raises(ServerUnavailableError) as error:
        generator.generate([user("hello")], SamplingParams(4))
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert url in message and "cannot connect" in message and "cai serve" in message
    assert not VllmAdmin(url, **FAST).ready()


def test_a_server_that_does_not_answer_times_out(fake):
    fake.delay_s = 1.0
    generator = VllmServerGenerator(fake.url, "base-model", retries=1, backoff_s=0.01, timeout_s=0.2)
    with pytest.raises(ServerUnavailableError, match="no answer within 0.2 s"):
        generator.generate([user("hello")], SamplingParams(4))


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next answer (an exception is raised), and the requests seen."""
    queue, seen = list(answers), []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


COMPLETION = {"choices": [{"index": 0, "message": {"role": "assistant", "content": " hi "}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def test_a_broken_connection_is_retried_then_succeeds(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    transport, seen = scripted(httpx.ConnectError("connection refused"), httpx.Response(200, json=COMPLETION))
    generator = VllmServerGenerator("http://vllm.test:8000", "base-model", retries=1, transport=transport, **FAST)
    assert generator.generate([user("hello")], SamplingParams(4)) == ["hi"]
    assert [str(r.url) for r in seen] == ["http://vllm.test:8000/v1/chat/completions"] * 2
    assert (generator.usage.requests, generator.usage.prompt_tokens) == (1, 3)
    assert "sk-not-for-this-server" not in seen[-1].headers.get("authorization", "")
    body = json.loads(seen[-1].content)  # vLLM's own fields travel beside OpenAI's
    assert body["skip_special_tokens"] is True and body["model"] == "base-model"


def test_a_refused_request_is_not_retried_and_says_why():
    refusal = httpx.Response(400, json={"error": {"message": "max_tokens is too large", "code": 400}})
    transport, seen = scripted(refusal)
    generator = VllmServerGenerator("http://vllm.test:8000", "base-model", retries=3, transport=transport, **FAST)
    with pytest.raises(ServerError, match=r"chat/completions was refused: HTTP 400: max_tokens is too large"):
        generator.generate([user("hello")], SamplingParams(4))
    assert len(seen) == 1


def test_an_unknown_model_is_not_retried_and_says_so(fake):
    generator = VllmServerGenerator(fake.url, "run-v7-deadbeef", retries=3, **FAST)
    with pytest.raises(UnknownModelError, match=r"does not serve 'run-v7-deadbeef'.*load_lora_adapter"):
        generator.generate([user("hello")], SamplingParams(4))
    assert len(fake.chat_bodies()) == 1


def test_adapters_are_loaded_once_and_replaced_when_their_path_changes(fake, tmp_path: Path):
    admin = VllmAdmin(fake.url, **FAST)
    assert admin.ready()
    assert admin.ensure_adapter("run-v1-aa", tmp_path / "v1") is True
    assert admin.ensure_adapter("run-v1-aa", tmp_path / "v1") is False
    assert admin.ensure_adapter("run-v1-aa", tmp_path / "other") is True
    served = admin.served()
    assert served["run-v1-aa"].path == str(tmp_path / "other") and served["run-v1-aa"].parent == "base-model"
    with pytest.raises(ServerError, match="is a base model"):
        admin.ensure_adapter("base-model", tmp_path / "v1")
    admin.unload_adapter("run-v1-aa")
    assert list(admin.served()) == ["base-model"]
    adapter = VllmServerGenerator(fake.url, "run-v1-aa", **FAST)
    with pytest.raises(UnknownModelError):
        adapter.choice_logprobs([user("x")], ["A", "B"])


# As a vLLM server writes it (prometheus_client's text format): counters with their `_created` gauges, two
# engines' label sets, a histogram, and an untyped line.
VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 10.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 5.0
# HELP vllm:prefix_cache_hits_created Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_created gauge
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 3.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.42
process_start_time_seconds 1.7e9
"""


def test_metrics_are_summed_over_label_sets(fake):
    parsed = parse_prometheus(VLLM_METRICS)
    # Counters keep their `_total` name, as callers read them; gauges and histograms' sum and count are summed.
    assert parsed["vllm:prefix_cache_hits_total"] == 15.0 and parsed["vllm:generation_tokens_total"] == 7.0
    assert parsed["vllm:num_requests_running"] == 3.0 and parsed["process_start_time_seconds"] == 1.7e9
    assert parsed["vllm:time_to_first_token_seconds_count"] == 3.0
    assert parsed["vllm:time_to_first_token_seconds_sum"] == pytest.approx(0.42)
    assert not [name for name in parsed if name.endswith("_bucket")]
    VllmServerGenerator(fake.url, "base-model", **FAST).generate([user("one two three")], SamplingParams(4))
    metrics = VllmAdmin(fake.url, **FAST).metrics()
    assert metrics["vllm:prefix_cache_queries_total"] > 0 and metrics["vllm:generation_tokens_total"] > 0


def test_metrics_reads_are_retried_and_garbage_is_refused():
    starting = httpx.Response(503, json={"error": {"message": "engine is starting"}})
    transport, seen = scripted(httpx.ConnectError("connection refused"), starting,
                               httpx.Response(200, text=VLLM_METRICS), httpx.Response(200, text="<html>proxy</html>"))
    admin = VllmAdmin("http://vllm.test:8000", retries=2, transport=transport, **FAST)
    assert admin.metrics()["vllm:prefix_cache_hits_total"] == 15.0 and len(seen) == 3
    with pytest.raises(ServerError, match="/metrics is not in the Prometheus text format"):
        admin.metrics()


def test_adapter_loading_errors_say_what_to_do(fake, tmp_path: Path):
    admin = VllmAdmin(fake.url, **FAST)
    with pytest.raises(ServerError, match=r"No adapter found \(the server reads the adapter from .*missing"):
        admin.load_adapter("run-v1-aa", tmp_path / "missing")
    fake.runtime_lora = False
    with pytest.raises(ServerError, match="does not load adapters at runtime.*VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        admin.load_adapter("run-v1-aa", tmp_path / "v1")
