"""A disk that fills while the trainer writes its checkpoints and adapter: one line that says so, the previous
adapter intact, and the same command finishes the iteration, as an uninterrupted run does, once there is space.

The run folder lies on a small tmpfs mounted for the test, which is filled the moment the trainer starts: a real
full disk under real processes. Mounting needs root; elsewhere the test is skipped."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from policies.training.launcher import PID_FILE
from tests.loop.runs import cai_command, cai_env, error_lines, folder_digest, run_cai, tiny_config, write_config
from tests.loop.service_runs import STEP_TIMEOUT_S, run_counts


@contextmanager
def small_disk(folder: Path, size: str = "48m") -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the disk has no byte left."""
    with open(path, "wb", buffering=0) as handle:
        for block in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):
            try:
                while True:
                    handle.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def iterate(config: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return run_cai("iterate", "--config", str(config), "--run-dir", str(run_dir), timeout=STEP_TIMEOUT_S)


@pytest.mark.slow
def test_a_full_disk_while_training_keeps_the_last_adapter_and_the_run_resumes(tmp_path, tiny_model_dir, cai_home):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(
        tiny_model_dir, cai_home, train={"preference": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-2,
                                                        "checkpoint_every": 1}}))
    reference = tmp_path / "reference"
    for _ in range(2):
        assert iterate(config, reference).returncode == 0
    with small_disk(tmp_path / "disk") as disk:
        run_dir = disk / "run"
        assert iterate(config, run_dir).returncode == 0
        first_adapter = folder_digest(run_dir / "policies" / "v1")
        log = (tmp_path / "second.log").open("w")
        second = subprocess.Popen(cai_command("iterate", "--config", str(config), "--run-dir", str(run_dir)),
                                  env=cai_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not list((run_dir / "training" / "iteration-2").glob(f"*/{PID_FILE}")):
            assert second.poll() is None and time.monotonic() < deadline, (tmp_path / "second.log").read_text()
            time.sleep(0.05)
        fill(tmp_path / "disk" / "filler")  # the trainer has started and has not written a checkpoint yet
        assert second.wait(STEP_TIMEOUT_S) == 1
        lines = error_lines((tmp_path / "second.log").read_text())
        assert len([line for line in lines if line.startswith("error:")]) == 1, lines
        assert lines[-1].startswith("error: the disk is full during stage train of iteration 2: the trainer "
                                    "could not write its checkpoint or adapter ("), lines
        assert "No space left on device" in lines[-1]
        assert lines[-1].endswith("; free some space and run the same command again to resume"), lines
        assert "Logging error" not in "\n".join(lines)
        assert folder_digest(run_dir / "policies" / "v1") == first_adapter
        assert sorted(p.name for p in (run_dir / "policies").iterdir()) == ["v1"]  # no v2, no staging left over

        (tmp_path / "disk" / "filler").unlink()
        resumed = iterate(config, run_dir)
        assert resumed.returncode == 0, resumed.stderr
        assert run_counts(run_dir, {}) == run_counts(reference, {})
        assert weights(run_dir) == weights(reference)


def weights(run_dir: Path) -> dict[str, str]:
    """The policies' weight files (their configs name the run folder's path)."""
    return {name: digest for name, digest in folder_digest(run_dir / "policies").items()
            if name.endswith(".safetensors")}
