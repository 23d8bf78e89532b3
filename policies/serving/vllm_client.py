"""The `Generator` over a vLLM OpenAI-compatible server, and the server's admin calls (adapters, metrics).

Requests run concurrently (bounded) on one asyncio loop inside each synchronous protocol call. Transient
failures (connection refused, timeouts, 5xx) are retried with exponential backoff; anything else fails at
once with an error that says what to do. Model text is untrusted: it is only ever carried as JSON strings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from policies.serving import Conversation, Progress, SamplingParams

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20
"""vLLM's default `--max-logprobs`: the most alternatives one request may ask for."""


class ServerError(RuntimeError):
    """A vLLM server call failed; the message says which server, which call and what to do."""


class ServerUnavailableError(ServerError):
    """The server is down, not ready yet, or kept failing after every retry."""


class UnknownModelError(ServerError):
    """The model or adapter name is not served (not loaded, unloaded, or a typo)."""


@dataclass
class Usage:
    """Token counts reported by the server for this client's requests."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Http:
    """One server's HTTP calls with retries; a fresh AsyncClient per synchronous call keeps loops separate."""

    url: str
    timeout_s: float = 300.0
    retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 16
    transport: httpx.AsyncBaseTransport | None = None
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits, transport=self.transport)

    def run(self, work: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def main():
            async with self.client() as client:
                return await work(client)

        return asyncio.run(main())

    async def request(self, client: httpx.AsyncClient, method: str, path: str,
                      body: dict[str, Any] | None = None) -> httpx.Response:
        """The response of a successful (2xx) call; transient failures are retried with backoff."""
        what = f"{method} {self.url}{path}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with jitter, so many waiting requests do not return in lockstep.
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                response = await client.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                problem = f"no answer within {self.timeout_s:g} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                problem = f"cannot connect or the connection broke ({type(exc).__name__}: {exc})"
                continue
            if response.status_code >= 500 and response.status_code != 501:
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                continue
            if response.status_code == 404:
                raise UnknownModelError(f"{what}: {_error_message(response)}")
            if response.status_code >= 400:
                raise ServerError(f"{what} was refused: HTTP {response.status_code}: {_error_message(response)}")
            return response
        raise ServerUnavailableError(
            f"{what} failed after {self.retries + 1} attempts: {problem}. Is the vLLM server running and "
            f"ready at {self.url}? Start one with `cai serve --config CONFIG` (GET {self.url}/health answers 200 "
            "when it is ready).")


def _error_message(response: httpx.Response) -> str:
    """vLLM's `{"error": {"message": ...}}`, or the start of whatever else the server said."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    # vLLM's errors carry "error"; FastAPI's own (an unknown route) carry "detail".
    error = (payload.get("error") or payload.get("detail")) if isinstance(payload, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(error) if error else (response.text[:500] or response.reason_phrase)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(f"{response.request.url} answered with invalid JSON: {response.text[:200]!r}") from exc


def _prefix_order(keys: Sequence[str]) -> list[int]:
    """Indices of `keys` in lexicographic order, so requests that start the same are sent side by side.

    vLLM's prefix cache reuses the KV blocks of a prompt's leading tokens, also between requests scheduled
    in the same step. Sorted, the judge's two orders of one comparison (same instructions and request) and
    the conversations about one prompt reach the server together, while their shared blocks are cached.
    """
    return sorted(range(len(keys)), key=keys.__getitem__)


def _conversation_key(conversation: Conversation) -> str:
    # The prompt as the chat template would lay it out, close enough to order requests by shared prefix.
    return "".join(f"\x00{m['role']}\x01{m['content']}" for m in conversation)


class VllmServerGenerator:
    """A `Generator` served by a vLLM OpenAI-compatible server under the model (or adapter) name `model`.

    Identical conversations in one call become one request with `n` samples. For `choice_logprobs`, each
    choice must be a single token; its log-prob is read from the top-20 alternatives of the first generated
    token. A choice outside the top 20 gets the lowest returned log-prob, an upper bound of its true value:
    the verdict can only come out less confident than the model's own (both labels outside: a tie).
    """

    def __init__(self, url: str, model: str, *, name: str | None = None, concurrency: int = 16,
                 timeout_s: float = 300.0, retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.model = model
        self.name = name or model
        self.http = _Http(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, concurrency=concurrency,
                          transport=transport)
        self._checked_choices: set[str] = set()

    @property
    def usage(self) -> Usage:
        return self.http.usage

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 progress: Progress | None = None) -> list[str]:
        keys = [_conversation_key(c) for c in conversations]
        copies: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            copies.setdefault(key, []).append(index)
        unique = list(copies)
        outputs: list[str] = [""] * len(conversations)

        async def one(client: httpx.AsyncClient, key: str) -> None:
            targets = copies[key]
            # Greedy samples are identical: ask once and copy the answer.
            n = len(targets) if params.temperature > 0 else 1
            body = self._chat_body(conversations[targets[0]]) | {
                "max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "n": n, "skip_special_tokens": True,
            }
            if params.seed is not None:
                body["seed"] = params.seed
            reply = await self._chat(client, body)
            texts = [self._text(reply, i) for i in range(n)]
            for slot, target in enumerate(targets):
                outputs[target] = texts[slot % n].strip()
            if progress:
                progress(len(targets))

        self.http.run(lambda client: self._dispatch(client, unique, unique, one))
        return outputs

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        scores: list[list[float]] = [[] for _ in conversations]

        async def one(client: httpx.AsyncClient, index: int) -> None:
            body = self._chat_body(conversations[index]) | {
                "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS,
            }
            reply = await self._chat(client, body)
            scores[index] = _choice_scores(reply, choices, self.model)
            if progress:
                progress(1)

        async def work(client: httpx.AsyncClient) -> None:
            await self._check_single_tokens(client, choices)
            keys = [_conversation_key(c) for c in conversations]
            await self._dispatch(client, keys, list(range(len(conversations))), one)

        self.http.run(work)
        return scores

    def models(self) -> list[str]:
        """The names the server answers to: its base model(s) and loaded adapters."""
        return [m["id"] for m in VllmAdmin(self.http).models()]

    async def _dispatch(self, client: httpx.AsyncClient, keys: Sequence[str], items: Sequence,
                        one: Callable[[httpx.AsyncClient, Any], Awaitable[None]]) -> None:
        """`one(client, item)` for every item, at most `concurrency` at a time, in prefix order of `keys`."""
        limit = asyncio.Semaphore(self.http.concurrency)

        async def bounded(item) -> None:
            async with limit:
                await one(client, item)

        # Tasks acquire the semaphore in creation order: that is the order requests reach the server.
        tasks = [asyncio.ensure_future(bounded(items[i])) for i in _prefix_order(keys)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # The first failure is the caller's error; the requests still in flight are abandoned.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _chat_body(self, conversation: Conversation) -> dict[str, Any]:
        continues = conversation[-1]["role"] == "assistant"
        body: dict[str, Any] = {"model": self.model, "messages": list(conversation)}
        if continues:  # vLLM extension: extend the final assistant message instead of starting a new one
            body |= {"add_generation_prompt": False, "continue_final_message": True}
        return body

    async def _chat(self, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.http.request(client, "POST", "/v1/chat/completions", body)
        except UnknownModelError as exc:
            raise UnknownModelError(
                f"{exc}. The server at {self.http.url} does not serve {self.model!r}: an adapter must be loaded "
                "(POST /v1/load_lora_adapter) before it is used, and the base model must be served under this "
                "name (`--served-model-name`).") from None
        reply = _json(response)
        usage = reply.get("usage") or {}
        self.http.usage.requests += 1
        self.http.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.http.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
        return reply

    def _text(self, reply: dict[str, Any], index: int) -> str:
        try:
            content = next(c for c in reply["choices"] if c.get("index", 0) == index)["message"]["content"]
        except (KeyError, StopIteration, TypeError) as exc:
            raise ServerError(f"{self.http.url}: a chat completion for {self.model!r} has no choice {index}: "
                              f"{json.dumps(reply)[:300]}") from exc
        return content or ""

    async def _check_single_tokens(self, client: httpx.AsyncClient, choices: Sequence[str]) -> None:
        for choice in choices:
            if choice in self._checked_choices:
                continue
            response = await self.http.request(client, "POST", "/tokenize", {
                "model": self.model, "prompt": choice, "add_special_tokens": False})
            tokens = _json(response).get("tokens", [])
            if len(tokens) != 1:
                raise ValueError(f"choice {choice!r} is {len(tokens)} tokens for {self.model!r}; "
                                 "choices must be 1 token")
            self._checked_choices.add(choice)


def _choice_scores(reply: dict[str, Any], choices: Sequence[str], model: str) -> list[float]:
    try:
        alternatives = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        by_token: dict[str, float] = {}
        for alternative in alternatives:
            token, logprob = alternative["token"], float(alternative["logprob"])
            by_token[token] = max(logprob, by_token.get(token, float("-inf")))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ServerError(f"the server's answer for {model!r} carries no top log-probs: "
                          f"{json.dumps(reply)[:300]}") from exc
    if not by_token:
        raise ServerError(f"the server returned no top log-probs for {model!r}")
    floor = min(by_token.values())
    return [by_token.get(choice, floor) for choice in choices]


@dataclass(frozen=True)
class ServedModel:
    name: str
    path: str | None
    """The adapter's directory as the server sees it (`root`); for a base model, its weights' directory."""
    parent: str | None
    """The base model an adapter applies to; None for a base model."""


class VllmAdmin:
    """Readiness, served models, LoRA adapter loading and Prometheus counters of one vLLM server."""

    def __init__(self, http: _Http | str, *, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.http = http if isinstance(http, _Http) else _Http(http, timeout_s=timeout_s, retries=retries,
                                                              backoff_s=backoff_s, transport=transport)

    @property
    def url(self) -> str:
        return self.http.url

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.run(lambda client: self.http.request(client, method, path, body))

    def ready(self) -> bool:
        """True when the server answers /health and lists its models; False while down or starting."""
        probe = _Http(self.http.url, timeout_s=5.0, retries=0, transport=self.http.transport)

        async def check(client: httpx.AsyncClient) -> bool:
            try:
                await probe.request(client, "GET", "/health")
                await probe.request(client, "GET", "/v1/models")
            except ServerError:
                return False
            return True

        return probe.run(check)

    def models(self) -> list[dict[str, Any]]:
        return list(_json(self._call("GET", "/v1/models")).get("data", []))

    def served(self) -> dict[str, ServedModel]:
        return {m["id"]: ServedModel(m["id"], m.get("root"), m.get("parent")) for m in self.models()}

    def load_adapter(self, name: str, path: Path) -> None:
        try:
            self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except UnknownModelError as exc:
            if str(exc).endswith("Not Found"):  # no such route: runtime loading is off
                raise ServerError(f"{exc}: the server at {self.url} does not load adapters at runtime; start it "
                                  "with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`cai serve` does)"
                                  ) from None
            raise ServerError(f"{exc} (the server reads the adapter from {path}: it must see that directory)") from None
        log.info("loaded LoRA adapter %s from %s into %s", name, path, self.url)

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        log.info("unloaded LoRA adapter %s from %s", name, self.url)

    def ensure_adapter(self, name: str, path: Path) -> bool:
        """Serve the adapter at `path` under `name`; True if it had to be (re)loaded."""
        current = self.served().get(name)
        if current is not None and current.parent is None:
            raise ServerError(f"{name!r} is a base model on {self.url}, it cannot also name an adapter")
        if current is not None and current.path == str(path):
            return False
        if current is not None:  # the same name pointing elsewhere: replace it
            self.unload_adapter(name)
        self.load_adapter(name, path)
        return True

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters, each summed over its label sets."""
        return parse_prometheus(self._call("GET", "/metrics").text)


def parse_prometheus(text: str) -> dict[str, float]:
    """{metric name: value summed over label sets} from Prometheus text exposition format."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, rest = line.rpartition("}") if "}" in line else ("", "", line)
        if name_and_labels:
            name = name_and_labels.split("{", 1)[0]
            fields = rest.split()
        else:
            parts = line.split()
            name, fields = parts[0], parts[1:]
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals
