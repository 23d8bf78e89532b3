"""Run a trainer in its own process (`python -m policies.training`, or torchrun / deepspeed / srun for several), so
its time, memory and crashes stay isolated from the caller; relay its progress lines; return its result.

The trainer never outlives the caller: it runs in a process group of its own, which is stopped when the caller
is interrupted (Ctrl-C, SIGTERM, any exception), and the child itself exits when the caller's process is gone
(`policies.processes.die_with_parent`), even after `kill -9`. A trainer left running in an output folder by a
caller that died is stopped before a new one starts there.

Across nodes, each node's caller starts torchrun for its own node rank (`Rendezvous`): node rank 0 through
`launch`, which writes the spec and reads the result, the others through `join` on the spec it wrote (the output
folder is shared). A `watch` callable, asked every second, may stop the trainer with a reason: a gang's callers
use it to tear the gang down when a node is lost, where the collectives would otherwise hang (`Gang`: the hooks
node rank 0's caller gives `launch`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from policies.files import atomic_write_text
from policies.processes import PARENT_PID_VARIABLE, command_line, kill_group, pid_alive, stop_child_group
from policies.training.spec import TrainSpec

log = logging.getLogger(__name__)

Launcher = Literal["python", "torchrun", "deepspeed", "slurm"]
PREFIX = "CAI_PROGRESS "
WATCH_EVERY_S = 1.0


PID_FILE = "trainer.pid"
"""In the output folder while a trainer runs there: {"host", "pid"} of its process group's leader (node rank 0's;
node rank r's is `trainer-node{r}.pid`)."""


class TrainingFailed(RuntimeError):
    """One line (what failed, the exit code, where the log is); the log's last lines are in `tail`."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of one training gang meet: `endpoint` (HOST:PORT) is hosted by node rank 0's torchrun, and
    `run_id` is new for every attempt, so a gang torn down never mixes with the next."""

    nodes: int
    endpoint: str
    run_id: str
    timeout_s: float
    """The gang must assemble within this (torchrun's rendezvous timeout)."""
    node_rank: int = 0


def free_endpoint(host: str | None = None) -> str:
    """HOST:PORT with a TCP port free on this host now (the OS's pick), for a rendezvous hosted here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return f"{host or socket.gethostname()}:{port}"


def _names(node_rank: int) -> tuple[str, str]:
    """(pid file, log file) of a node rank's trainer in the shared output folder."""
    return (PID_FILE, "train.log") if node_rank == 0 else (f"trainer-node{node_rank}.pid", f"train-node{node_rank}.log")


def stop_orphaned_trainer(output_dir: Path, pid_name: str = PID_FILE) -> None:
    """Stop a trainer still running in `output_dir` for a caller that is gone, so two never share the folder."""
    pid_file = output_dir / pid_name
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


def command(spec_path: Path, launcher: Launcher = "python", processes: int = 1,
            rendezvous: Rendezvous | None = None, slurm_args: Sequence[str] = ()) -> list[str]:
    module = ["-m", "policies.training", str(spec_path)]
    if launcher == "python":
        return [sys.executable, *module]
    if launcher == "deepspeed":
        return ["deepspeed", f"--num_gpus={processes}", "--module", *module[1:]]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if rendezvous is None:  # one node
        return [*torchrun, "--standalone", *module]
    r = rendezvous
    across = [f"--nnodes={r.nodes}", f"--rdzv-endpoint={r.endpoint}", f"--rdzv-id={r.run_id}", "--max-restarts=0"]
    if launcher == "torchrun":
        # The static backend keeps each node's rank as given (the dynamic one orders nodes by host and pid): node
        # rank 0 holds global rank 0, which writes the adapter and prints the progress its caller records.
        return [*torchrun, *across, f"--node-rank={r.node_rank}", "--rdzv-backend=static",
                f"--rdzv-conf=timeout={max(1, round(r.timeout_s))}", *module]
    # srun starts one torchrun agent per node of the allocation and relays every rank's output; the agents meet
    # at a c10d rendezvous hosted by the node whose host name the endpoint names.
    return ["srun", f"--nodes={r.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *slurm_args, *torchrun,
            *across, "--rdzv-backend=c10d", f"--rdzv-conf=join_timeout={max(1, round(r.timeout_s))}", *module]


def _watching(process: subprocess.Popen, watch: Callable[[], str | None] | None) -> tuple[threading.Event, list]:
    """Ask `watch` every second while `process` runs; the first reason it gives stops the process group."""
    done, reasons = threading.Event(), []
    if watch is None:
        return done, reasons

    def look() -> None:
        while not done.wait(WATCH_EVERY_S):
            try:
                reason = watch()
            except Exception as exc:  # a database blip: asked again next second
                log.warning("could not check the training gang: %s", exc)
                continue
            if reason:
                reasons.append(reason)
                stop_child_group(process, grace_s=5.0)
                return

    threading.Thread(target=look, name="trainer-watch", daemon=True).start()
    return done, reasons


def _run_child(argv: list[str], output_dir: Path, node_rank: int,
               on_progress: Callable[[dict[str, Any]], None] | None,
               watch: Callable[[], str | None] | None) -> tuple[int, list[str], str | None]:
    """Run one trainer command in its own group: (exit code, the log's last lines, the watch's reason or None)."""
    pid_name, log_name = _names(node_rank)
    stop_orphaned_trainer(output_dir, pid_name)
    tail: deque[str] = deque(maxlen=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_VARIABLE: str(os.getpid())}
    pid_file = output_dir / pid_name
    with open(output_dir / log_name, "a", encoding="utf-8", buffering=1) as log_file:  # each line at once
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                       start_new_session=True)
        except FileNotFoundError as exc:
            raise TrainingFailed(f"cannot start the trainer: {argv[0]} is not installed here ({exc.strerror})",
                                 []) from None
        done, reasons = _watching(process, watch)
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
            done.set()
            stop_child_group(process)
            pid_file.unlink(missing_ok=True)
    return code, list(tail), (reasons[0] if reasons else None)


def last_words(tail: list[str]) -> str:
    """The line of a trainer's output that says why it ended: its last one; under torchrun, whose failure summary
    comes last, the signal the summary names or else the last line before the summary (the rank's own error)."""
    lines = [line.strip() for line in tail if line.strip() and not line.startswith(PREFIX)]
    summary = max((i for i, line in enumerate(lines) if line.endswith(" FAILED")), default=None)
    if summary is None:
        return lines[-1] if lines else ""
    signalled = [line.partition(":")[2].strip() for line in lines[summary:]
                 if line.startswith("traceback") and "Signal" in line]
    before = [line for line in lines[:summary] if set(line) - set("=-")]
    return signalled[0] if signalled else before[-1] if before else ""


def _failure(what: str, code: int, tail: list[str], reason: str | None, log_path: Path) -> TrainingFailed:
    if reason:
        return TrainingFailed(f"{what} was stopped: {reason}; log: {log_path}", tail)
    why = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    last = last_words(tail)
    return TrainingFailed(f"{what} {why}{': ' + last if last else ''}; log: {log_path}", tail)


class Gang(Protocol):
    """A trainer run across nodes, as its caller organises the other nodes (`loop.service.gang`, or srun's)."""

    nodes: int

    def open(self, spec_path: Path) -> Rendezvous:
        """Where this run's nodes meet; called once the spec is written, before node rank 0's trainer starts."""

    def watch(self) -> str | None:
        """Asked every second while the run goes on: a reason to stop it (a node was lost), or None."""

    def close(self, ok: bool) -> None:
        """The run ended, with a result (`ok`) or not."""


@dataclass
class SlurmAllocation:
    """`train.launcher: slurm`: srun starts every node from here, inside the caller's Slurm allocation, so the
    nodes meet at this host (or `endpoint`) and no one else needs telling."""

    nodes: int
    timeout_s: float
    endpoint: str | None = None

    def open(self, spec_path: Path) -> Rendezvous:
        return Rendezvous(self.nodes, self.endpoint or free_endpoint(), f"cai-{uuid.uuid4().hex[:12]}", self.timeout_s)

    def watch(self) -> str | None:
        return None

    def close(self, ok: bool) -> None:
        return None


def _check_world(spec: TrainSpec, launcher: Launcher, processes: int, gang: Gang | None) -> None:
    if gang is not None and launcher not in ("torchrun", "slurm"):
        raise ValueError(f"training across nodes needs the torchrun or slurm launcher, not {launcher}")
    if launcher == "slurm" and gang is None:
        raise ValueError("the slurm launcher starts its nodes through a gang: pass a SlurmAllocation")
    world = processes * (gang.nodes if gang is not None else 1)
    if world > 1 and spec.deepspeed is None:
        raise ValueError(f"{world} training processes need a DeepSpeed config: set `deepspeed: zero2` (or zero3)")


def launch(spec: TrainSpec, *, launcher: Launcher = "python", processes: int = 1, gang: Gang | None = None,
           slurm_args: Sequence[str] = (),
           on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train as described by `spec` (as node rank 0 of `gang`, when given); returns the metrics from its
    result.json.

    The child's own log goes to `output_dir/train.log`; on failure its last lines are in the error.
    """
    _check_world(spec, launcher, processes, gang)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.output_dir / "spec.json"
    atomic_write_text(spec_path, spec.model_dump_json(indent=1))
    spec.result_path.unlink(missing_ok=True)
    rendezvous = gang.open(spec_path) if gang is not None else None
    ok = False
    try:
        code, tail, reason = _run_child(command(spec_path, launcher, processes, rendezvous, slurm_args),
                                        spec.output_dir, 0, on_progress, gang.watch if gang is not None else None)
        ok = code == 0 and reason is None and spec.result_path.is_file()
    finally:
        if gang is not None:
            gang.close(ok)
    if not ok:
        raise _failure(f"{spec.kind} training", code, tail, reason, spec.output_dir / "train.log")
    return json.loads(spec.result_path.read_text())["metrics"]


def join(spec_path: Path, rendezvous: Rendezvous, *, processes: int = 1,
         watch: Callable[[], str | None] | None = None) -> None:
    """Run node rank `rendezvous.node_rank` (> 0) of a gang on the spec node rank 0 wrote; returns when the gang's
    training finished (node rank 0 then holds the result)."""
    if rendezvous.node_rank < 1:
        raise ValueError("node rank 0 trains through launch(), which writes the spec and reads the result")
    if not spec_path.is_file():
        raise TrainingFailed(f"node rank {rendezvous.node_rank} of the training gang cannot read {spec_path}: the run "
                             "folder must be shared by every node, at the same path", [])
    code, tail, reason = _run_child(command(spec_path, "torchrun", processes, rendezvous), spec_path.parent,
                                    rendezvous.node_rank, None, watch)
    if code != 0 or reason:
        raise _failure(f"node rank {rendezvous.node_rank} of the training gang", code, tail, reason,
                       spec_path.parent / _names(rendezvous.node_rank)[1])
