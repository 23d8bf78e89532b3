"""The `Generator` over a vLLM OpenAI-compatible server, and the server's admin calls (adapters, metrics).

Requests run concurrently (bounded) on one asyncio loop inside each synchronous protocol call; the HTTP
calls, their retries and errors are `vllm_http`'s. Model text is untrusted: it is only ever carried as JSON
strings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from policies.serving import Conversation, Progress, SamplingParams
from policies.serving.control_tokens import COMMON_SPECIALS, neutralise_conversation, restore
from policies.serving.vllm_http import (
    ServerError,
    ServerHttp,
    ServerUnavailableError,
    UnknownModelError,
    Usage,
    read_json,
)

if TYPE_CHECKING:
    import openai

__all__ = ["ServedModel", "ServerError", "ServerUnavailableError", "UnknownModelError", "Usage", "VllmAdmin",
           "VllmServerGenerator", "parse_prometheus"]

log = logging.getLogger(__name__)
T = TypeVar("T")

TOP_LOGPROBS = 20
"""vLLM's default `--max-logprobs`: the most alternatives one request may ask for."""


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

    The server renders the chat template itself: the control-token strings of `specials` (the served model's,
    read from its local tokenizer with `control_tokens.specials_of`; by default those of the common templates)
    are neutralised in every message's content before it is sent; a marker copied into a reply is taken out.
    """

    def __init__(self, url: str, model: str, *, name: str | None = None, concurrency: int = 16,
                 timeout_s: float = 300.0, retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, specials: Sequence[str] | None = None,
                 on_restart: Callable[[], object] | None = None, outage_s: float = 0.0):
        self.model = model
        self.name = name or model
        self.specials = tuple(COMMON_SPECIALS if specials is None else specials)
        self.http = ServerHttp(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                               concurrency=concurrency, transport=transport)
        self._checked_choices: set[str] = set()
        self.on_restart = on_restart
        """Called when the server is back after an outage (a restarted server has no adapters): load ours."""
        self.outage_s = outage_s
        """How long a call waits for a server that stopped answering (or lost our adapter) to come back; 0: not."""

    def _through_restarts(self, call: Callable[[], T]) -> T:
        """`call()`; if the server went away (or came back without our adapter), wait up to `outage_s` for its
        /health, let `on_restart()` restore what it lost, and make the whole call again (none of its replies was
        returned yet). A server that never answered this client is not waited for: it is not running."""
        deadline = time.monotonic() + self.outage_s
        while True:
            try:
                return call()
            except (ServerUnavailableError, UnknownModelError) as exc:
                if not self.http.answered or time.monotonic() >= deadline:
                    raise
                log.warning("the vLLM server at %s failed a call (%s); waiting for it to come back",
                            self.http.url, str(exc).split(". ")[0])
                admin = VllmAdmin(self.http)
                while not admin.ready():
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(min(2.0, max(0.05, self.http.backoff_s)))
                if self.on_restart is not None:
                    self.on_restart()
                log.info("the vLLM server at %s is back; repeating the call", self.http.url)

    @property
    def usage(self) -> Usage:
        return self.http.usage

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 progress: Progress | None = None, *, samples: int = 1) -> list[str]:
        """One reply per conversation, or `samples` replies each, consecutively (conversation 0's first): the
        copies of a conversation go to the server as one request with `n` samples."""
        if samples > 1 and params.temperature <= 0:
            raise ValueError(f"{samples} samples per conversation need a temperature above 0 (greedy repeats one)")
        conversations = [c for c in conversations for _ in range(samples)]
        keys = [_conversation_key(c) for c in conversations]
        copies: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            copies.setdefault(key, []).append(index)
        unique = list(copies)
        outputs: list[str] = [""] * len(conversations)

        async def one(api: openai.AsyncOpenAI, key: str) -> None:
            targets = copies[key]
            # Greedy samples are identical: ask once and copy the answer.
            n = len(targets) if params.temperature > 0 else 1
            fields = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                      "n": n}
            if params.seed is not None:
                fields["seed"] = params.seed
            reply = await self._chat(api, conversations[targets[0]], fields, skip_special_tokens=True)
            texts = [self._text(reply, i) for i in range(n)]
            for slot, target in enumerate(targets):
                outputs[target] = texts[slot % n].strip()
            if progress:
                progress(len(targets))

        self._through_restarts(lambda: self.http.run(
            lambda client: self._dispatch(self.http.openai(client), unique, unique, one)))
        return outputs

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        scores: list[list[float]] = [[] for _ in conversations]

        async def one(api: openai.AsyncOpenAI, index: int) -> None:
            fields = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
            reply = await self._chat(api, conversations[index], fields)
            scores[index] = _choice_scores(reply, choices, self.model)
            if progress:
                progress(1)

        async def work(client: httpx.AsyncClient) -> None:
            await self._check_single_tokens(client, choices)
            keys = [_conversation_key(c) for c in conversations]
            await self._dispatch(self.http.openai(client), keys, list(range(len(conversations))), one)

        self._through_restarts(lambda: self.http.run(work))
        return scores

    def models(self) -> list[str]:
        """The names the server answers to: its base model(s) and loaded adapters."""
        return [m["id"] for m in VllmAdmin(self.http).models()]

    async def _dispatch(self, api: openai.AsyncOpenAI, keys: Sequence[str], items: Sequence,
                        one: Callable[[openai.AsyncOpenAI, Any], Awaitable[None]]) -> None:
        """`one(api, item)` for every item, at most `concurrency` at a time, in prefix order of `keys`."""
        limit = asyncio.Semaphore(self.http.concurrency)

        async def bounded(item) -> None:
            async with limit:
                await one(api, item)

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

    async def _chat(self, api: openai.AsyncOpenAI, conversation: Conversation, fields: dict[str, Any],
                    **vllm_fields: Any) -> dict[str, Any]:
        if conversation[-1]["role"] == "assistant":  # extend the final assistant message instead of a new one
            vllm_fields |= {"add_generation_prompt": False, "continue_final_message": True}
        body = {"model": self.model, "messages": neutralise_conversation(conversation, self.specials), **fields,
                "extra_body": vllm_fields}
        try:
            reply = await self.http.chat(api, body)
        except UnknownModelError as exc:
            raise UnknownModelError(
                f"{exc}. The server at {self.http.url} does not serve {self.model!r}: an adapter must be loaded "
                "(POST /v1/load_lora_adapter) before it is used, and the base model must be served under this "
                "name (`--served-model-name`).") from None
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
        return restore(content or "")

    async def _check_single_tokens(self, client: httpx.AsyncClient, choices: Sequence[str]) -> None:
        for choice in choices:
            if choice in self._checked_choices:
                continue
            response = await self.http.request(client, "POST", "/tokenize", {
                "model": self.model, "prompt": choice, "add_special_tokens": False})
            tokens = read_json(response).get("tokens", [])
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

    def __init__(self, http: ServerHttp | str, *, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.http = http if isinstance(http, ServerHttp) else ServerHttp(
            http, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, transport=transport)

    @property
    def url(self) -> str:
        return self.http.url

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.run(lambda client: self.http.request(client, method, path, body))

    def ready(self) -> bool:
        """True when the server answers /health and lists its models; False while down or starting."""
        probe = ServerHttp(self.http.url, timeout_s=5.0, retries=0, transport=self.http.transport)

        async def check(client: httpx.AsyncClient) -> bool:
            try:
                await probe.request(client, "GET", "/health")
                await probe.request(client, "GET", "/v1/models")
            except ServerError:
                return False
            return True

        return probe.run(check)

    def models(self) -> list[dict[str, Any]]:
        return list(read_json(self._call("GET", "/v1/models")).get("data", []))

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
        """vLLM's Prometheus counters and gauges, each summed over its label sets."""
        text = self._call("GET", "/metrics").text
        try:
            return parse_prometheus(text)
        except ValueError as exc:
            raise ServerError(f"GET {self.url}/metrics is not in the Prometheus text format: {exc}") from None


def parse_prometheus(text: str) -> dict[str, float]:
    """{sample name: value summed over label sets} from the Prometheus text exposition format.

    Keyed by sample name, as the text spells it: a counter under its `_total` name (the parser's family name
    drops the suffix), a histogram as `_sum` and `_count`. Its `_bucket` samples are left out: cumulative
    counts summed over their bounds mean nothing.
    """
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not (sample.name.endswith("_bucket") and "le" in sample.labels):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
