"""One real vLLM server per test session, started the way a user starts it: `cai serve`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from loop.evaluation.gates import GATES

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN_S = 1800
"""Creating the vLLM environment on a fresh machine (minutes) plus the server's first start."""


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    config: Path
    stderr: Path
    ready_after_s: float

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def vllm_served(tmp_path_factory, cai_home: Path, smollm2_dir: Path):
    """`cai serve` for SmolLM2 on 127.0.0.1, with a config whose iterations use it (generation.backend)."""
    from policies.serving.vllm_client import VllmAdmin
    from policies.serving.vllm_server import free_port

    folder = tmp_path_factory.mktemp("vllm")
    url = f"http://127.0.0.1:{free_port()}"
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["home"] = str(cai_home)
    config["prompts"]["files"] = [str(ROOT / "data/prompts" / f) for f in ("harmful.jsonl", "borderline.jsonl")]
    config["prompts"]["draw"] = "random"  # the pairs below are judged: no need for twins
    # float32 like the transformers backend, so the two can be compared number for number.
    config["model"]["dtype"] = "float32"
    # A small held-out evaluation and gates open to any candidate: these tests are about the loop's chain.
    config["evaluation"] = {"per_set": 2, "max_new_tokens": 16, "refusal": {"classifier": "lexical"}}
    config["gates"] = {g.setting: None for g in GATES}
    # Every comparison becomes a pair, so each iteration trains a new adapter to serve.
    config["judge"]["margin"] = 0.0
    config["pairs"] = {"source": "judged", "sampler": {"length_tolerance": None}}
    config["generation"] |= {"backend": "vllm-server", "server": {"url": url, "kv_cache_gib": 2, "keep_adapters": 2}}
    path = folder / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    stderr = folder / "serve.stderr"
    started = time.perf_counter()
    with stderr.open("w") as err:
        command = [sys.executable, "-m", "loop.cli", "serve", "--config", str(path), "--log", str(folder / "vllm.log")]
        process = subprocess.Popen(command, cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    served = Served(process, url, path, stderr, 0.0)
    try:
        admin = VllmAdmin(url, retries=0)
        while not admin.ready():
            if process.poll() is not None:
                pytest.fail(f"`cai serve` exited with {process.returncode}:\n{_tail(stderr)}")
            if time.perf_counter() - started > READY_WITHIN_S:
                pytest.fail(f"`cai serve` was not ready after {READY_WITHIN_S} s:\n{_tail(stderr)}")
            time.sleep(2)
        served.ready_after_s = time.perf_counter() - started
        assert process.stdout.readline().strip() == url  # the URL alone on stdout, for scripts
        yield served
    finally:
        served.stop()
