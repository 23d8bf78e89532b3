"""HTTP calls to one vLLM server: retries, timeouts and errors that say what to do.

Chat completions go through the official `openai` client (its retries, timeouts and typed errors) over an
httpx connection pool; vLLM's own routes (/tokenize, /health, /metrics, adapter loading) are outside the
OpenAI API and use that pool directly, retried on the same statuses by the loop written out here. Transient
failures (connection refused, timeouts, 5xx) are retried with exponential backoff; anything else fails at once
with an error that says what to do.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import openai


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
class ServerHttp:
    """One server's HTTP calls with retries; a fresh AsyncClient per synchronous call keeps loops separate.

    Chat completions retry on the openai client's schedule (0.5 s doubling up to 8 s, or the server's
    Retry-After); `backoff_s` paces the retries of vLLM's own routes.
    """

    url: str
    timeout_s: float = 300.0
    retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 16
    transport: httpx.AsyncBaseTransport | None = None
    usage: Usage = field(default_factory=Usage)
    answered: bool = False
    """Whether the server answered any call of this object: a server that never did is not restarting, it is
    missing, and a call fails at once instead of waiting for it."""

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

    def openai(self, client: httpx.AsyncClient) -> openai.AsyncOpenAI:
        """The OpenAI API of this server over `client`'s connections, with this object's retries and timeout."""
        import openai  # on first use: it adds about half a second to every `cai` command, most need only the errors

        # An explicit key: vLLM checks one only when started with --api-key, and OPENAI_API_KEY must not leak here.
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="EMPTY", max_retries=self.retries,
                                  timeout=client.timeout, http_client=client)

    async def chat(self, api: openai.AsyncOpenAI, fields: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/chat/completions with `fields` (vLLM's own under "extra_body"); the reply's JSON."""
        import openai

        what = f"POST {self.url}/v1/chat/completions"
        try:
            # The raw reply: vLLM's JSON as sent, read as a dict by the same code as the other routes.
            raw = await api.chat.completions.with_raw_response.create(**fields)
        except openai.APIStatusError as exc:  # after the client's retries of the transient ones
            if _transient(exc.status_code):
                raise self.unavailable(what, f"HTTP {exc.status_code}: {_error_message(exc.response)}") from None
            _raise_for_status(what, exc.response)
            raise
        except openai.APIConnectionError as exc:  # timeouts included; the httpx error is the cause
            raise self.unavailable(what, self.transport_problem(exc.__cause__ or exc)) from None
        self.answered = True
        return read_json(raw.http_response)

    async def request(self, client: httpx.AsyncClient, method: str, path: str,
                      body: dict[str, Any] | None = None) -> httpx.Response:
        """The response of a successful (2xx) call to one of vLLM's own routes; transient failures are retried
        with backoff, as the openai client does for the chat completions (it does not reach these routes)."""
        what = f"{method} {self.url}{path}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff with jitter, so many waiting requests do not return in lockstep.
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                response = await client.request(method, path, json=body)
            except httpx.TransportError as exc:
                problem = self.transport_problem(exc)
                continue
            if _transient(response.status_code):
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                continue
            self.answered = True
            _raise_for_status(what, response)
            return response
        raise self.unavailable(what, problem)

    def transport_problem(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer within {self.timeout_s:g} s ({type(exc).__name__})"
        return f"cannot connect or the connection broke ({type(exc).__name__}: {exc})"

    def unavailable(self, what: str, problem: str) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"{what} failed after {self.retries + 1} attempts: {problem}. Is the vLLM server running and "
            f"ready at {self.url}? Start one with `cai serve --config CONFIG` (GET {self.url}/health answers 200 "
            "when it is ready).")


def _transient(status: int) -> bool:
    # The statuses the openai client retries (timeout, conflict, rate limit, server errors); the others do too.
    return status in (408, 409, 429) or status >= 500


def _raise_for_status(what: str, response: httpx.Response) -> None:
    if response.status_code == 404:
        raise UnknownModelError(f"{what}: {_error_message(response)}")
    if response.status_code >= 400:
        raise ServerError(f"{what} was refused: HTTP {response.status_code}: {_error_message(response)}")


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


def read_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(f"{response.request.url} answered with invalid JSON: {response.text[:200]!r}") from exc
