"""Start, check and stop a local vLLM OpenAI-compatible server (CPU build) for the policy's base model.

The server runs in its own virtual environment (`policies.serving.vllm_env`) as a separate process group, so
stopping it also stops vLLM's engine and worker processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from policies.serving.vllm_client import VllmAdmin

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for --max-lora-rank."""


class VllmServerSettings(BaseModel):
    """How cai talks to a vLLM server, and how `cai serve` starts one."""

    model_config = ConfigDict(extra="forbid")

    url: str = "http://127.0.0.1:8000"
    urls: list[str] = Field(default_factory=list)
    """More servers of the same model beside `url`: a daemon's inference shards are spread over all of them
    (shard k on server k mod n), and every policy is published to each."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once; vLLM batches them continuously."""
    timeout_s: float = Field(default=300, gt=0)
    """Per request; a request that times out is retried."""
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    """First wait before a retry of vLLM's own routes (adapters, /metrics, /tokenize); it doubles each time. Chat
    completions retry on the openai client's own schedule (0.5 s doubling to 8 s, or the server's Retry-After)."""
    keep_adapters: int = Field(default=3, ge=1)
    """Policy adapters of a run kept loaded (the newest, always including the current one)."""
    outage_s: float = Field(default=900, ge=0)
    """How long a stage waits for a server that stopped answering (restarted, say) to answer /health again; the
    policy's adapter, which a restarted server has lost, is then loaded again and the call repeated. 0: fail at
    the first unanswered call (after `retries`)."""
    # The rest is used by `cai serve` only.
    kv_cache_gib: int = Field(default=4, ge=1)
    """VLLM_CPU_KVCACHE_SPACE: memory for the KV cache (and so the prefix cache)."""
    max_model_len: int = Field(default=2048, ge=128)
    block_size: int = Field(default=32, ge=16)
    """KV block size in tokens; the prefix cache shares whole blocks. vLLM's CPU default (128) is too coarse
    for short shared prefixes such as the judge's instructions."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Weights and activations; default: model.dtype, as the transformers backend. float32 gives the same
    log-probs as transformers; bfloat16 is faster on CPU but rounds the judge's log-probs (steps of ~0.1)."""
    cpu_reserved: int = Field(default=0, ge=0)
    """VLLM_CPU_NUM_OF_RESERVED_CPU: cores kept free of the engine's threads for the HTTP front end. vLLM
    reserves one by default, which halves a 2-core machine."""
    start_timeout_s: float = Field(default=900, gt=0)
    extra_args: list[str] = []
    """More `vllm.entrypoints.openai.api_server` arguments, passed as given."""


class VllmStartError(RuntimeError):
    pass


def max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that fits adapters of rank `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")


def served_model_name(model_name: str) -> str:
    """The name the base model is served under: a built-in name as is, a directory by its folder name."""
    return Path(model_name).name if "/" in model_name else model_name


def host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: `cai serve` starts a local server and needs an http://HOST:PORT URL")
    return parts.hostname, parts.port or 80


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


class VllmServer:
    """A running server process; `stop()` ends it and its engine processes."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process = process
        self.url = url
        self.log_path = log_path

    @classmethod
    def start(cls, python: Path, model_dir: Path, *, served_name: str, settings: VllmServerSettings,
              lora_rank: int, log_path: Path, url: str | None = None) -> VllmServer:
        """Launch the server for `model_dir` at `url` (default: settings.url); returns before it is ready."""
        url = (url or settings.url).rstrip("/")
        host, port = host_and_port(url)
        if _listening(host, port):
            raise VllmStartError(f"something already listens on {host}:{port}; stop it or choose another "
                                 "generation.server.url")
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--dtype", settings.dtype or "auto", "--max-model-len", str(settings.max_model_len),
            "--block-size", str(settings.block_size), "--enable-prefix-caching",
            "--enable-lora", "--max-lora-rank", str(max_lora_rank(lora_rank)),
            "--max-loras", str(settings.keep_adapters), "--max-cpu-loras", str(settings.keep_adapters),
            "--generation-config", "vllm",  # sampling defaults come from each request, as with transformers
            "--disable-uvicorn-access-log",
            *settings.extra_args,
        ]
        env = dict(os.environ)
        for name in ("VIRTUAL_ENV", "PYTHONPATH"):  # ours, not the vLLM environment's
            env.pop(name, None)
        env |= {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": str(settings.cpu_reserved),
            "VLLM_NO_USAGE_STATS": "1",
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            # A new session: stop() signals the whole group, engine core and workers included.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        log.info("started vLLM server pid %d for %s at %s (log: %s)", process.pid, model_dir, url, log_path)
        return cls(process, url, log_path)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /health and /v1/models answer; raises with the log's tail if it dies or times out."""
        started = time.perf_counter()
        admin = VllmAdmin(self.url)
        while True:
            if self.process.poll() is not None:
                raise VllmStartError(f"the vLLM server exited with code {self.process.returncode} before it "
                                     f"was ready; last lines of {self.log_path}:\n{self.log_tail()}")
            if admin.ready():
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                self.stop()
                raise VllmStartError(f"the vLLM server was not ready after {timeout_s:.0f} s; last lines of "
                                     f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(1.0)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        log.info("stopped vLLM server at %s", self.url)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        # Weight-loading chatter is repeated per tensor; it hides the lines that explain a failure.
        useful = [line for line in text if "Attempted to load weight" not in line]
        return "\n".join(useful[-lines:])
