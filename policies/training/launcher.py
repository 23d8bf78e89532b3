"""Run a trainer in its own process (`python -m policies.training`, or torchrun / deepspeed for several), so its
time, memory and crashes stay isolated from the caller; relay its progress lines; return its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from policies.files import atomic_write_text
from policies.training.spec import TrainSpec

Launcher = Literal["python", "torchrun", "deepspeed"]
PREFIX = "CAI_PROGRESS "


class TrainingFailed(RuntimeError):
    pass


def command(spec_path: Path, launcher: Launcher = "python", processes: int = 1) -> list[str]:
    if launcher == "python":
        return [sys.executable, "-m", "policies.training", str(spec_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "policies.training", str(spec_path)]
    return ["deepspeed", f"--num_gpus={processes}", "--module", "policies.training", str(spec_path)]


def launch(spec: TrainSpec, *, launcher: Launcher = "python", processes: int = 1,
           on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train as described by `spec`; returns the metrics from its result.json.

    The child's own log goes to `output_dir/train.log`; on failure its last lines are in the error.
    """
    if processes > 1 and spec.deepspeed is None:
        raise ValueError(f"{processes} training processes need a DeepSpeed config: set `deepspeed: zero2` (or zero3)")
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.output_dir / "spec.json"
    atomic_write_text(spec_path, spec.model_dump_json(indent=1))
    spec.result_path.unlink(missing_ok=True)
    log_path = spec.output_dir / "train.log"
    tail: deque[str] = deque(maxlen=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log_file:
        process = subprocess.Popen(command(spec_path, launcher, processes), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            tail.append(line.rstrip())
            if line.startswith(PREFIX) and on_progress:
                on_progress(json.loads(line[len(PREFIX):]))
        code = process.wait()
    if code != 0 or not spec.result_path.is_file():
        raise TrainingFailed(f"{spec.kind} training exited with code {code}; log: {log_path}\n" + "\n".join(tail))
    return json.loads(spec.result_path.read_text())["metrics"]
