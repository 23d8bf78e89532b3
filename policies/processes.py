"""Child processes that never outlive their parent: liveness, process groups, and the child's parent-death check.

Torch-free, so the loop's lease and the trainer entry point share it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time

log = logging.getLogger(__name__)

PARENT_PID_VARIABLE = "CAI_TRAINER_PARENT_PID"
"""Set by the launcher in a trainer's environment: the process the trainer must not outlive."""
PR_SET_PDEATHSIG = 1


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            # The state follows the parenthesised command name, which may itself hold spaces or parentheses.
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_started_at(pid: int) -> float | None:
    """When the process started, in seconds since the epoch (to the kernel's clock tick); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                    members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def kill_group(pgid: int, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> bool:
    """Send `sig` to a process group and wait until no live member is left; True if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return not group_alive(pgid)


def stop_child_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child started with `start_new_session=True` and everything it started: SIGTERM, then SIGKILL."""
    pgid = process.pid  # the session leader's id is its group's id
    if process.poll() is None or group_alive(pgid):
        log.info("stopping trainer process group %d", pgid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
        kill_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)


def die_with_parent(poll_s: float = 0.5) -> None:
    """In a trainer child: end this process group as soon as the launching process is gone.

    The kernel's parent-death signal covers a direct child at once; the polling thread also covers the workers
    of torchrun or deepspeed (whose parent is the launcher tool, not the loop) and a parent that died before the
    signal was armed.
    """
    value = os.environ.get(PARENT_PID_VARIABLE)
    if not value:
        return
    parent = int(value)
    try:
        own_group = os.getpgrp() != os.getpgid(parent)
    except OSError:  # the parent is already gone: the launcher's new session is a group of our own
        own_group = os.getsid(0) == os.getpgrp()
    if os.getppid() == parent:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def end_group() -> None:
        # Only a group of our own (the launcher starts a new session): never the parent's, e.g. a shell's.
        if own_group:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(137)

    if not pid_alive(parent):
        end_group()

    def watch() -> None:
        while pid_alive(parent):
            time.sleep(poll_s)
        end_group()

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
