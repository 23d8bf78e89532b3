"""`cai worker --processes N`: N worker processes kept alive (one that dies is started again) until asked to stop.

Each worker loads its model once and keeps it between shards, so more workers on a machine means more processes,
not more threads; the supervisor itself loads nothing.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence

STOP_GRACE_S = 30.0
"""How long stopped workers get to hand back their shard and exit before they are killed."""


def supervise(command: Sequence[str], processes: int, stop: threading.Event,
              say: Callable[[str], object] = print, poll_s: float = 1.0) -> None:
    """Run `processes` copies of `command`, restart any that exits, and once `stop` is set terminate them all
    (SIGTERM: each finishes cleanly), killing those still running after `STOP_GRACE_S`."""
    children = [subprocess.Popen(command) for _ in range(processes)]
    while not stop.wait(poll_s):
        for i, child in enumerate(children):
            if child.poll() is not None:
                say(f"worker process {child.pid} exited ({child.returncode}); starting another")
                children[i] = subprocess.Popen(command)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
