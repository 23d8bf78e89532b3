"""Every failure a user can cause or meet in `cai iterate`: one line, no traceback, the right exit code, a line in
cai.log, and the run folder and its database exactly as they were."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from loop.cli import app
from loop.config import load_run_config
from loop.pipeline.iteration import run_iteration
from loop.pipeline.stages import STAGES
from loop.store import IterationInputs
from loop.store.database import open_run_store
from tests.loop.runs import (
    ROOT,
    cai_env,
    database_digest,
    error_lines,
    folder_digest,
    run_cai,
    tiny_config,
    write_config,
)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_model_dir, cai_home) -> tuple[Path, Path]:
    """(config file, run folder) of a run whose first iteration stopped in training: all else is recorded."""
    folder = tmp_path_factory.mktemp("interrupted")
    config = write_config(folder / "config.yaml", tiny_config(tiny_model_dir, cai_home))
    run_dir = folder / "run"
    real_train = STAGES["train"]

    def crash(ctx):
        raise RuntimeError("injected crash in train")

    STAGES["train"] = replace(real_train, run=crash)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run_iteration(load_run_config(config), run_dir)
    finally:
        STAGES["train"] = real_train
    return config, run_dir


@pytest.fixture
def run(interrupted_run, tmp_path) -> tuple[Path, Path]:
    """A private copy of the interrupted run, and its config."""
    config, source = interrupted_run
    shutil.copytree(source, tmp_path / "run")
    return config, tmp_path / "run"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_one_line(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_untouched(run_dir: Path, before: tuple[dict[str, str], str]) -> None:
    assert (folder_digest(run_dir), database_digest(run_dir / "cai.db")) == before


def digests(run_dir: Path) -> tuple[dict[str, str], str]:
    return folder_digest(run_dir), database_digest(run_dir / "cai.db")


def logged_errors(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "cai.log").read_text().splitlines() if "level=ERROR" in line]


def test_a_missing_config_file_is_one_line_and_creates_nothing(tmp_path):
    """The real command in its own process: exactly one line on stderr, exit 2, no run folder."""
    result = run_cai("iterate", "--config", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "new"))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {tmp_path / 'nope.yaml'}: cannot read config: "
                                          "No such file or directory"], result.stderr
    assert not (tmp_path / "new").exists()


def test_bad_config_values_name_their_source(run, tmp_path):
    config, run_dir = run
    before = digests(run_dir)
    bad = write_config(tmp_path / "bad.yaml", {**yaml.safe_load(config.read_text()), "seed": "abc"})
    assert_one_line(invoke("iterate", "--config", str(bad), "--run-dir", str(run_dir)), 2,
                    f"{bad}: seed: Input should be a valid integer")
    assert_one_line(invoke("iterate", "--config", str(config), "--run-dir", str(run_dir),
                           env={"CAI_TRAIN__PREFERENCE__BETA": "high"}), 2,
                    "environment variable CAI_TRAIN__PREFERENCE__BETA: train.preference.beta:")
    assert_one_line(invoke("iterate", "--config", str(config), "--run-dir", str(run_dir),
                           env={"CAI_PROMPTS": "{not json"}), 2, "environment variable CAI_PROMPTS")
    assert_one_line(invoke("iterate", "--config", str(config), "--run-dir", str(run_dir),
                           env={"CAI_TRAIN__PREFERENCE__BETTA": "0.2"}), 2,
                    "unknown environment variable CAI_TRAIN__PREFERENCE__BETTA; "
                    "did you mean CAI_TRAIN__PREFERENCE__BETA?")
    assert_untouched(run_dir, before)
    assert len(logged_errors(run_dir)) == 4


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "no-such-model", "device": "cpu"}}, "model 'no-such-model' is neither a directory"),
    ({"prompts": {"files": [str(ROOT / "README.md")], "per_iteration": 3}}, "README.md:1: invalid JSON"),
    ({"constitution": str(ROOT / "pyproject.toml")}, "pyproject.toml"),
    ({"train": {"launcher": "torchrun", "nodes": 2, "deepspeed": "zero2"}},
     "trains as a gang of `cai worker --queues train` processes, one per node; cai iterate trains in its own"),
])
def test_inputs_are_validated_before_anything_is_written(run, tmp_path, change, message):
    config, run_dir = run
    before = digests(run_dir)
    bad = write_config(tmp_path / "bad.yaml", {**yaml.safe_load(config.read_text()), **change})
    assert_one_line(invoke("iterate", "--config", str(bad), "--run-dir", str(run_dir)), 2, message)
    assert_untouched(run_dir, before)  # config.yaml included: it is written only once a run starts
    assert_one_line(invoke("iterate", "--config", str(bad), "--run-dir", str(tmp_path / "new")), 2, message)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("damage, code, message", [
    ("garbage", 2, "is not an SQLite database"),
    ("truncated", 1, "is damaged"),
    ("empty", 1, "is empty but"),
])
def test_a_damaged_database_is_refused_and_kept(run, damage, code, message):
    config, run_dir = run
    db = run_dir / "cai.db"
    content = db.read_bytes()
    (run_dir / "policies" / "v1").mkdir(parents=True)  # as after a finished iteration
    db.write_bytes({"garbage": b"\x07" * 4096, "truncated": content[:len(content) // 2], "empty": b""}[damage])
    before = folder_digest(run_dir)
    assert_one_line(invoke("iterate", "--config", str(config), "--run-dir", str(run_dir)), code, message)
    assert folder_digest(run_dir) == before
    assert logged_errors(run_dir)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from loop.store.database import open_run_store
    from loop.store.lease import acquire
    store = open_run_store(Path(sys.argv[1]), write=True)
    acquire(store, sys.argv[2])
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_run_held_by_a_live_process_is_refused_naming_it(run):
    config, run_dir = run
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), run_dir.name], cwd=ROOT, env=cai_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = digests(run_dir)
        result = run_cai("iterate", "--config", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 1, result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert lines[0].startswith(f"error: run 'run' is in use by pid {holder.pid} on {socket.gethostname()}, since ")
        assert lines[0].endswith("UTC, last heartbeat 0 s ago; wait for it to finish or stop it first") or \
            "s ago; wait for it to finish or stop it first" in lines[0]
        assert_untouched(run_dir, before)
    finally:
        holder.kill()
        holder.wait()


def test_resuming_with_a_changed_constitution_or_config_refuses_or_records_both(run, tmp_path):
    config, run_dir = run
    before = digests(run_dir)
    constitution = tmp_path / "edited.yaml"
    constitution.write_text((ROOT / "principles/default.yaml").read_text().replace("real harm", "any harm", 1))
    raw = yaml.safe_load(config.read_text())
    edited = write_config(tmp_path / "edited-constitution.yaml", {**raw, "constitution": str(constitution)})
    result = invoke("iterate", "--config", str(edited), "--run-dir", str(run_dir))
    assert_one_line(result, 2, "iteration 1 was started with other inputs (constitution: ", "--allow-changed")
    faster = {**raw, "train": {**raw["train"], "preference": {**raw["train"]["preference"], "learning_rate": 0.02}}}
    result = invoke("iterate", "--config", str(write_config(tmp_path / "faster.yaml", faster)),
                    "--run-dir", str(run_dir))
    assert_one_line(result, 2, "config train.preference.learning_rate: 0.01 → 0.02")
    assert_untouched(run_dir, before)

    result = invoke("iterate", "--config", str(edited), "--run-dir", str(run_dir), "--allow-changed")
    assert result.exit_code == 0, result.output
    store = open_run_store(run_dir, write=False)
    with store.session() as session:
        recorded = list(session.scalars(select(IterationInputs.constitution_hash).order_by(IterationInputs.id)))
    store.dispose()
    assert len(recorded) == 2 and recorded[0] != recorded[1]
    assert f"constitution {recorded[0]} → {recorded[1]}" in " ".join(result.stdout.split())
    status = invoke("status", "--run-dir", str(run_dir), "--json")
    assert json.loads(status.stdout)["constitution_hashes"] == recorded


def test_debug_shows_the_traceback(run, tmp_path):
    config, run_dir = run
    bad = write_config(tmp_path / "bad.yaml", {**yaml.safe_load(config.read_text()), "seed": "abc"})
    result = invoke("--debug", "iterate", "--config", str(bad), "--run-dir", str(run_dir))
    assert result.exit_code == 2 and "Traceback" in result.stderr
    result = invoke("iterate", "--config", str(bad), "--run-dir", str(run_dir), env={"CAI_DEBUG": "1"})
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert os.environ.get("CAI_DEBUG") is None


def test_a_full_disk_is_named_by_its_first_failure():
    import errno

    from sqlalchemy.exc import OperationalError

    from loop.cli.errors import classify
    from loop.progress import Position
    from policies.training.launcher import TrainingFailed

    trainer = TrainingFailed("preference training exited with code 1: OSError: [Errno 28] No space left on device; "
                             "log: run/train.log", [])
    database = OperationalError("UPDATE runs ...", {}, Exception("database or disk is full"))
    database.__context__ = trainer  # recording the trainer's failure met the same full disk
    line, code = classify(database, Position(iteration=2, stage="train"))
    assert code == 1
    assert line == ("the disk is full during stage train of iteration 2: the trainer could not write its "
                    "checkpoint or adapter (preference training exited with code 1: OSError: [Errno 28] No space "
                    "left on device); "
                    "free some space and run the same command again to resume")
    line, _ = classify(OSError(errno.ENOSPC, "No space left on device", "run/policies/v2"), None)
    assert line == "the disk is full: cannot write run/policies/v2; free some space and run the same command again " \
                   "to resume"
    sqlite = OperationalError("SELECT 1", {}, Exception("database or disk is full"))
    assert classify(sqlite, None)[0].startswith("the disk is full: database or disk is full;")
    assert classify(OSError(errno.EACCES, "Permission denied"), None)[0].startswith("PermissionError")
