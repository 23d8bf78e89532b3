"""Trainer children never outlive their parent: real processes, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from policies.processes import PARENT_PID_VARIABLE, group_members, pid_alive, stop_child_group
from policies.training.launcher import PID_FILE, TrainingFailed, stop_orphaned_trainer

ROOT = Path(__file__).resolve().parents[2]

WORKER = "from policies.processes import die_with_parent; die_with_parent(poll_s=0.1); import time; time.sleep(300)"
# What the launcher does: the trainer in a new session, told which process it must not outlive.
LOOP = textwrap.dedent("""
    import os, subprocess, sys, time
    command = [sys.executable, "-c", sys.argv[1]]
    child = subprocess.Popen(command, start_new_session=True,
                             env={**os.environ, "CAI_TRAINER_PARENT_PID": str(os.getpid())})
    print(child.pid, flush=True)
    time.sleep(300)
""")


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def start_loop(child_code: str) -> tuple[subprocess.Popen, int]:
    loop = subprocess.Popen([sys.executable, "-c", LOOP, child_code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return loop, int(loop.stdout.readline())


def test_a_direct_trainer_child_dies_with_its_killed_parent():
    loop, child = start_loop(WORKER)
    time.sleep(1.0)  # the child has armed its parent-death signal
    assert pid_alive(child)
    loop.kill()
    loop.wait()
    assert wait_until(lambda: not pid_alive(child), 5), "the trainer outlived its parent"


def test_workers_under_an_intermediate_launcher_die_with_the_loop():
    """torchrun's layout: loop → launcher tool (no check of its own) → workers; the workers end the whole group."""
    tool = textwrap.dedent(f"""
        import subprocess, sys, time
        workers = [subprocess.Popen([sys.executable, "-c", {WORKER!r}]) for _ in range(2)]
        time.sleep(300)
    """)
    loop, group = start_loop(tool)
    assert wait_until(lambda: len(group_members(group)) == 3, 30)
    members = group_members(group)
    loop.kill()
    loop.wait()
    assert wait_until(lambda: not any(pid_alive(pid) for pid in members), 5), "processes outlived the loop"


def test_a_child_whose_parent_is_already_gone_does_not_start():
    code = "import os, sys, time; time.sleep(0.5)"  # the loop is gone before the child checks
    process = subprocess.Popen([sys.executable, "-c", code])
    process.wait()
    worker = subprocess.Popen([sys.executable, "-c", WORKER], start_new_session=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), PARENT_PID_VARIABLE: str(process.pid)})
    assert worker.wait(30) == -signal.SIGKILL  # it ends its own group, itself included


def test_stop_child_group_stops_everything_the_child_started():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); "
                              "time.sleep(300)"], start_new_session=True)
    assert wait_until(lambda: len(group_members(child.pid)) == 2, 30)
    members = group_members(child.pid)
    stop_child_group(child, grace_s=5)
    assert not any(pid_alive(pid) for pid in members)


def test_a_trainer_left_in_a_folder_is_stopped_before_a_new_one_starts(tmp_path):
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m", "policies.training"],
                              start_new_session=True)
    (tmp_path / PID_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": orphan.pid}))
    stop_orphaned_trainer(tmp_path)
    assert orphan.wait(5) == -signal.SIGKILL
    assert not (tmp_path / PID_FILE).exists()
    # A pid file of another host cannot be checked from here: refuse rather than share the folder.
    (tmp_path / PID_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(TrainingFailed, match="used by a trainer on host elsewhere"):
        stop_orphaned_trainer(tmp_path)
