"""A small stand-in for a vLLM OpenAI-compatible server, for unit tests only: a real HTTP server on 127.0.0.1
that answers the endpoints cai uses, with scripted replies and failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Logprobs = Callable[[str, list[dict]], dict[str, float]]
"""(model, messages) -> {token: logprob} of the first answer token."""


def default_logprobs(model: str, messages: list[dict]) -> dict[str, float]:
    # Adapters lean the other way than the base model, so tests can tell who answered.
    if "-v" in model:
        return {"B": -0.3, "A": -1.6, "The": -2.0}
    return {"A": -0.4, "The": -1.5, "B": -2.5}


@dataclass
class FakeVllm:
    base: str = "base-model"
    adapters: dict[str, str] = field(default_factory=dict)
    fail_next: int = 0
    """Answer this many of the coming requests with HTTP 503."""
    logprobs: Logprobs = default_logprobs
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=lambda: {
        "vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0,
        "vllm:generation_tokens_total": 0.0, "vllm:prompt_tokens_total": 0.0})
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.0
    runtime_lora: bool = True
    """False: no adapter routes, as a server started without VLLM_ALLOW_RUNTIME_LORA_UPDATING."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply: Callable[[str, list[dict]], str] | None = None
    """(model, messages) -> the answer's text; default: a reply naming the model, sample and seed."""

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((path, body))
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, {"error": {"message": "engine is starting", "code": 503}}
        if method == "GET" and path == "/health":
            return 200, ""
        if method == "GET" and path == "/v1/models":
            data = [{"id": self.base, "root": "/models/base", "parent": None}]
            data += [{"id": name, "root": root, "parent": self.base} for name, root in self.adapters.items()]
            return 200, {"object": "list", "data": data}
        if method == "GET" and path == "/metrics":
            lines = [f'{name}{{engine="0",model_name="{self.base}"}} {value}' for name, value in self.counters.items()]
            return 200, "# HELP fake\n" + "\n".join(lines) + "\n"
        if path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and not self.runtime_lora:
            return 404, {"detail": "Not Found"}
        if path == "/v1/load_lora_adapter":
            if body["lora_path"].endswith("missing"):
                return 404, {"error": {"message": f"Loading lora {body['lora_name']} failed: No adapter found"}}
            if body["lora_name"] in self.adapters:
                return 400, {"error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}}
            self.adapters[body["lora_name"]] = body["lora_path"]
            return 200, "Success"
        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(body["lora_name"], None) is None:
                return 404, {"error": {"message": f"The lora adapter '{body['lora_name']}' cannot be found."}}
            return 200, "Success"
        if path == "/tokenize":
            words = body["prompt"].split()  # a word tokenizer: the judges' labels (A, B, Yes, No) are one token each
            return 200, {"tokens": list(range(len(words))), "count": len(words)}
        if path == "/v1/chat/completions":
            return self.chat(body)
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = body["model"]
        if model != self.base and model not in self.adapters:
            return 404, {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}}
        messages = body["messages"]
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        n = body.get("n", 1)
        choices = []
        for i in range(n):
            if body.get("logprobs"):
                top = self.logprobs(model, messages)
                best = max(top, key=top.get)
                logprobs = {"content": [{"token": best, "logprob": top[best], "top_logprobs": [
                    {"token": t, "logprob": v} for t, v in top.items()]}]}
                content = best
            else:
                logprobs = None
                seed = body.get("seed")
                content = (self.reply(model, messages) if self.reply is not None
                           else f" [{model}] reply {i} seed={seed} to: {messages[-1]['content'][:30]} ")
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "logprobs": logprobs})
        completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
        with self.lock:
            self.counters["vllm:prefix_cache_queries_total"] += prompt_tokens
            self.counters["vllm:prefix_cache_hits_total"] += prompt_tokens // 2
            self.counters["vllm:prompt_tokens_total"] += prompt_tokens
            self.counters["vllm:generation_tokens_total"] += completion_tokens
        return 200, {"choices": choices, "usage": {"prompt_tokens": prompt_tokens,
                                                   "completion_tokens": completion_tokens}}

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path == "/v1/chat/completions"]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeVllm

    def _serve(self, method: str) -> None:
        import time

        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        fake = self.server.fake  # type: ignore[attr-defined]
        with fake.lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if fake.delay_s:
                time.sleep(fake.delay_s)
            status, payload = fake.handle(method, self.path, body)
        finally:
            with fake.lock:
                fake.in_flight -= 1
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, *args) -> None:
        pass


class FakeVllmServer:
    """`with FakeVllmServer(FakeVllm()) as server:` serves the fake at `server.url` until the block ends."""

    def __init__(self, fake: FakeVllm, port: int = 0):
        """`port`: 0 for a free one; an earlier server's port to stand for that server restarted."""
        self.fake = fake
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.fake = fake  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeVllmServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
