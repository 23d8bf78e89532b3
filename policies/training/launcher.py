"""Run a trainer in its own process (`python -m policies.training`, or torchrun / deepspeed for several), so its
time, memory and crashes stay isolated from the caller; relay its progress lines; return its result.

The trainer never outlives the caller: it runs in a process group of its own, which is stopped when the caller
is interrupted (Ctrl-C, SIGTERM, any exception), and the child itself exits when the caller's process is gone
(`policies.processes.die_with_parent`), even after `kill -9`. A trainer left running in an output folder by a
caller that died is stopped before a new one starts there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from policies.files import atomic_write_text
from policies.processes import PARENT_PID_VARIABLE, command_line, kill_group, pid_alive, stop_child_group
from policies.training.spec import TrainSpec

log = logging.getLogger(__name__)

Launcher = Literal["python", "torchrun", "deepspeed"]
PREFIX = "CAI_PROGRESS "


PID_FILE = "trainer.pid"
"""In the output folder while a trainer runs there: {"host", "pid"} of its process group's leader."""


class TrainingFailed(RuntimeError):
    """One line (what failed, the exit code, where the log is); the log's last lines are in `tail`."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


def stop_orphaned_trainer(output_dir: Path) -> None:
    """Stop a trainer still running in `output_dir` for a caller that is gone, so two never share the folder."""
    pid_file = output_dir / PID_FILE
    try:
        holder = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    pid = int(holder.get("pid", 0))
    if holder.get("host") != socket.gethostname():
        raise TrainingFailed(f"{output_dir} is used by a trainer on host {holder.get('host')} (pid {pid}); "
                             f"stop it there, or remove {pid_file} if it is gone", [])
    if pid and pid_alive(pid) and any("policies.training" in part for part in command_line(pid)):
        log.warning("stopping trainer pid %d left running in %s by an earlier run", pid, output_dir)
        if not kill_group(pid):
            raise TrainingFailed(f"a trainer left running in {output_dir} (pid {pid}) did not stop", [])
    pid_file.unlink(missing_ok=True)


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
    stop_orphaned_trainer(spec.output_dir)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.output_dir / "spec.json"
    atomic_write_text(spec_path, spec.model_dump_json(indent=1))
    spec.result_path.unlink(missing_ok=True)
    log_path = spec.output_dir / "train.log"
    tail: deque[str] = deque(maxlen=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_VARIABLE: str(os.getpid())}
    pid_file = spec.output_dir / PID_FILE
    with open(log_path, "a", encoding="utf-8", buffering=1) as log_file:  # each line written (or not) at once
        process = subprocess.Popen(command(spec_path, launcher, processes), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        try:
            atomic_write_text(pid_file, json.dumps({"host": socket.gethostname(), "pid": process.pid}))
            assert process.stdout is not None
            for line in process.stdout:
                with suppress(OSError):  # a full disk must not hide the trainer's own error: the tail keeps it
                    log_file.write(line)
                tail.append(line.rstrip())
                if line.startswith(PREFIX) and on_progress:
                    on_progress(json.loads(line[len(PREFIX):]))
            code = process.wait()
        finally:
            # Interrupted or not: nothing the trainer started may keep running (torchrun's workers included).
            stop_child_group(process)
            pid_file.unlink(missing_ok=True)
    if code != 0 or not spec.result_path.is_file():
        why = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = next((line for line in reversed(tail) if line.strip() and not line.startswith(PREFIX)), "")
        raise TrainingFailed(f"{spec.kind} training {why}{': ' + last.strip() if last else ''}; log: {log_path}",
                             list(tail))
    return json.loads(spec.result_path.read_text())["metrics"]
