"""Fault injection on the embedded path, with real `cai iterate` processes and real trainer children.

Two iterations are run once without interruption, and once more while being killed at seeded random points in
every stage: `kill -9` of `cai iterate` (at least 10 times), SIGTERM and Ctrl-C (SIGINT to cai alone), `kill -9` of
the trainer child, and a second `cai iterate` (with another learning rate) started on the live run. After each
interruption the same command is run again. The end state must equal the uninterrupted run's (counts, content
hash, adapter hashes), no trainer may outlive its parent, and every interruption ends in its one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from loop.store import Comparison, Critique, Iteration, Pair, Policy, Run, Sample
from loop.store.database import open_run_store
from policies.processes import command_line, pid_alive
from tests.loop.runs import ROOT, cai_command, cai_env, error_lines, tiny_config, write_config

pytestmark = pytest.mark.slow

STAGES = ("generate", "critique", "judge", "pairs", "train")
ITERATIONS = 2
STEP_TIMEOUT_S = 300
"""Bound on each wait: a process start, a stage being reached, an exit."""


def run_state(run_dir: Path) -> dict:
    """Counts, a content hash over everything the stages recorded, and each adapter's hash."""
    store = open_run_store(run_dir, write=False)
    with store.session() as s:
        index = {it.id: it.index for it in s.scalars(select(Iteration))}
        samples = {x.id: x for x in s.scalars(select(Sample))}

        def key(sample_id: int) -> tuple:
            x = samples[sample_id]
            return index[x.iteration_id], x.prompt_id, x.sample_index

        content = {
            "iterations": sorted((it.index, it.status, it.policy_version, it.constitution_hash)
                                 for it in s.scalars(select(Iteration))),
            "samples": sorted((*key(x.id), x.response, x.revision) for x in samples.values()),
            "critiques": sorted((*key(c.sample_id), c.round, c.principle_id, c.critique, c.revision)
                                for c in s.scalars(select(Critique))),
            "comparisons": sorted((*key(c.sample_id), c.principle_id, c.p_b_when_first, c.p_b_when_second, c.p_b)
                                  for c in s.scalars(select(Comparison))),
            "pairs": sorted((index[p.iteration_id], p.chosen, p.rejected, p.target) for p in s.scalars(select(Pair))),
            "policies": sorted((p.version, p.parent_version, p.adapter_path, p.pairs, p.trainer)
                               for p in s.scalars(select(Policy))),
            "current_policy": s.scalar(select(Run.current_policy)),
        }
    store.dispose()
    adapters = {}
    for version, _, path, _, _ in content["policies"]:
        if path:
            folder = run_dir / path
            # PEFT writes target_modules from a set, in an order that changes with each process's string hashing.
            config = {k: sorted(v) if isinstance(v, list) else v
                      for k, v in json.loads((folder / "adapter_config.json").read_text()).items()}
            adapters[version] = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()
                                               + json.dumps(config, sort_keys=True).encode()).hexdigest()
    counts = {name: len(rows) for name, rows in content.items() if isinstance(rows, list)}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return {"counts": counts, "content": digest, "adapters": adapters}


def trainers_of(run_dir: Path) -> list[int]:
    """Live trainer processes working in this run folder."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            line = " ".join(command_line(int(entry)))
            if "policies.training" in line and str(run_dir) in line:
                found.append(int(entry))
    return found


def signal_all(pids: list[int], signum: int) -> list[int]:
    """Send `signum` to each process still there; the ones it reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


def _interruptible() -> None:
    """A test run in the background inherits SIGINT ignored (as shells do for background jobs), and Python keeps
    it ignored; a user's `cai` in a terminal has it at its default, so the child gets that back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cai:
    process: subprocess.Popen
    stderr: Path
    log_offset: int

    def errors(self) -> list[str]:
        """Its error lines (stderr also holds the progress bars), and no traceback."""
        text = self.stderr.read_text(errors="replace")
        assert "Traceback" not in text, text
        return [line for line in error_lines(text) if line.startswith("error:")]


class Runner:
    def __init__(self, folder: Path, config: Path):
        self.folder, self.config, self.run_dir = folder, config, folder / "run"
        self.started = 0

    @property
    def log(self) -> Path:
        return self.run_dir / "cai.log"

    def log_text(self, offset: int = 0) -> str:
        return self.log.read_text(errors="replace")[offset:] if self.log.is_file() else ""

    def start(self, config: Path | None = None) -> Cai:
        self.started += 1
        stderr = self.folder / f"cai-{self.started}.stderr"
        with stderr.open("w") as err:
            process = subprocess.Popen(cai_command("iterate", "--config", str(config or self.config), "--run-dir",
                                                   str(self.run_dir)),
                                       cwd=ROOT, env=cai_env(), stdout=subprocess.DEVNULL, stderr=err,
                                       stdin=subprocess.DEVNULL, preexec_fn=_interruptible)
        return Cai(process, stderr, len(self.log_text()))

    def stages_started(self, cai: Cai) -> list[tuple[int, int]]:
        """(iteration, stage index) of every stage this process started, from its log lines."""
        return [(int(iteration), STAGES.index(stage)) for stage, iteration in
                re.findall(r"msg='stage (\w+) of iteration (\d+) starting'", self.log_text(cai.log_offset))]

    def reach(self, cai: Cai, iteration: int, stage: str | None) -> bool:
        """True once the process has started `stage` of `iteration` or a later one (a kill may have landed past
        the stage it aimed at); False if the process exits first."""
        target = (iteration, -1 if stage is None else STAGES.index(stage))
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            exited = cai.process.poll() is not None
            if target[1] < 0 or any(point >= target for point in self.stages_started(cai)):
                return True
            if exited:
                return False
            time.sleep(0.02)
        pytest.fail(f"stage {stage} of iteration {iteration} was not reached within {STEP_TIMEOUT_S} s")

    def stage_running(self, cai: Cai) -> str:
        """The stage the process is in (the last it started), or start-up."""
        started = self.stages_started(cai)
        return STAGES[started[-1][1]] if started else "start-up"


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_trainer(run_dir: Path, iteration: int, parent: int) -> int:
    """The pid of the trainer child of `parent`, once it has started (its launcher writes trainer.pid; a killed
    run's stale file may still be there until then)."""
    folder = run_dir / "training" / f"iteration-{iteration}"
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        for pid_file in folder.rglob("trainer.pid") if folder.is_dir() else []:
            try:
                pid = int(json.loads(pid_file.read_text())["pid"])
            except (OSError, ValueError):
                continue  # removed or being replaced right now
            if parent_of(pid) == parent:
                return pid
        time.sleep(0.05)
    pytest.fail(f"no trainer started in {folder} within {STEP_TIMEOUT_S} s")


def run_files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file but cai.log and SQLite's -shm: what a refused command must not change."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "cai.log" and not p.name.endswith("-shm")}


def assert_no_orphaned_trainer(run_dir: Path) -> float:
    """Seconds until no trainer of the run is left (its parent is gone); fails after 10 s."""
    start = time.monotonic()
    while trainers_of(run_dir):
        if time.monotonic() - start > 10:
            pytest.fail(f"trainer processes {trainers_of(run_dir)} outlived their parent")
        time.sleep(0.05)
    return time.monotonic() - start


def test_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, cai_home):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(tiny_model_dir, cai_home))
    other_lr = tiny_config(tiny_model_dir, cai_home)
    other_lr["train"]["preference"]["learning_rate"] = 0.05
    other_config = write_config(tmp_path / "other-lr.yaml", other_lr)

    reference = Runner(tmp_path / "reference", config)
    reference.folder.mkdir()
    for _ in range(ITERATIONS):
        cai = reference.start()
        assert cai.process.wait(STEP_TIMEOUT_S) == 0, cai.stderr.read_text()
    expected = run_state(reference.run_dir)
    assert expected["counts"]["iterations"] == ITERATIONS and len(expected["adapters"]) == ITERATIONS

    # The plan: per iteration a kill during start-up, then one point per stage, in order; the interruption
    # kinds other than kill -9 ride on the long train stage (the trainer child is live there).
    rng = random.Random(13)
    plan = []
    for iteration in range(1, ITERATIONS + 1):
        plan.append((iteration, None, "kill", rng.uniform(0.2, 3.0)))
        for stage in STAGES:
            # The short stages last well under a second on the tiny model: kill soon after they start.
            plan.append((iteration, stage, "kill", rng.uniform(0.0, 0.3 if stage != "train" else 4.0)))
    plan[6:6] = [(1, "train", "sigterm", rng.uniform(0.0, 1.5)), (1, "train", "second", 0.0)]
    plan += [(ITERATIONS, "train", "sigint", rng.uniform(0.0, 1.5)), (ITERATIONS, "train", "trainer", 0.0)]
    plan.sort(key=lambda p: (p[0], -1 if p[1] is None else STAGES.index(p[1])))

    chained = Runner(tmp_path / "chained", config)
    chained.folder.mkdir()
    landed: list[tuple[int, str, str]] = []
    orphan_s: list[float] = []
    done = 0
    while done < ITERATIONS:
        cai = chained.start()
        plan = [point for point in plan if point[0] > done]  # points of a finished iteration are past
        if not plan or plan[0][0] != done + 1:
            assert cai.process.wait(STEP_TIMEOUT_S) == 0, cai.stderr.read_text()
            done += 1
            continue
        iteration, stage, kind, delay = plan.pop(0)
        if not chained.reach(cai, iteration, stage):
            assert cai.process.returncode == 0, cai.stderr.read_text()
            done += 1
            continue
        trainer = wait_for_trainer(chained.run_dir, iteration, cai.process.pid) if kind != "kill" else None
        time.sleep(delay)
        where = chained.stage_running(cai)
        if cai.process.poll() is not None:  # it finished before the point: no interruption this time
            assert cai.process.returncode == 0, cai.stderr.read_text()
            done += 1
            continue
        if kind == "second":
            # The first is stopped meanwhile, so that it is surely still in its train stage (and alive) when the
            # second one looks: a stopped holder keeps its lease, however long it stays stopped. Its trainer child
            # is stopped too: it would otherwise go on writing checkpoints and the adapter.
            cai.process.send_signal(signal.SIGSTOP)
            paused = signal_all(trainers_of(chained.run_dir), signal.SIGSTOP)
            before = run_files(chained.run_dir)
            second = subprocess.run(cai_command("iterate", "--config", str(other_config), "--run-dir",
                                                str(chained.run_dir)), cwd=ROOT, env=cai_env(), capture_output=True,
                                    text=True, timeout=STEP_TIMEOUT_S, stdin=subprocess.DEVNULL)
            assert second.returncode == 1, second.stderr
            lines = error_lines(second.stderr)
            assert len(lines) == 1 and f"is in use by pid {cai.process.pid} on " in lines[0], second.stderr
            assert run_files(chained.run_dir) == before  # nothing on disk changed
            signal_all(paused, signal.SIGCONT)
            cai.process.send_signal(signal.SIGCONT)
            landed.append((iteration, where, kind))
            assert cai.process.wait(STEP_TIMEOUT_S) == 0, cai.stderr.read_text()  # the first goes on, unharmed
            done += 1
            continue
        if kind == "trainer":
            os.kill(trainer, signal.SIGKILL)
            assert cai.process.wait(STEP_TIMEOUT_S) == 1
            assert cai.errors() == [f"error: training failed in stage train of iteration {iteration}: preference "
                                    f"training was killed by signal 9; log: "
                                    f"{chained.run_dir}/training/iteration-{iteration}/preference/train.log; "
                                    "run the same command again to retry"], cai.stderr.read_text()
            assert "training failed" in chained.log_text(cai.log_offset)
        elif kind in ("sigterm", "sigint"):
            cai.process.send_signal(signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
            code = cai.process.wait(STEP_TIMEOUT_S)
            name = "SIGTERM" if kind == "sigterm" else "Ctrl-C"
            assert code == (143 if kind == "sigterm" else 130), cai.stderr.read_text()
            line = f"interrupted ({name}) during stage train of iteration {iteration}; run the same command again " \
                   "to resume"
            assert cai.errors() == [f"error: {line}"], cai.stderr.read_text()
            assert line in chained.log_text(cai.log_offset)
        else:
            cai.process.kill()
            cai.process.wait()
        landed.append((iteration, where, kind))
        orphan_s.append(assert_no_orphaned_trainer(chained.run_dir))

    kills = [point for point in landed if point[2] == "kill"]
    assert len(kills) >= 10, landed
    assert {stage for _, stage, kind in kills} >= {"start-up", "generate", "critique", "train"}, landed
    assert {kind for _, _, kind in landed} == {"kill", "sigterm", "sigint", "trainer", "second"}, landed
    assert run_state(chained.run_dir) == expected, landed
    assert (chained.run_dir / "config.yaml").read_text() == (reference.run_dir / "config.yaml").read_text()
    assert not trainers_of(chained.run_dir) and max(orphan_s) < 10
    print(f"interruptions (iteration, stage, kind): {landed}; trainers gone within {max(orphan_s):.2f} s")
