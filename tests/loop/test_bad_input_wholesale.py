"""Every file the service reads, corrupted at random: truncated, a field of the wrong type, bytes that are not
UTF-8, a control character (raw or escaped), a megabyte string. Each gives one line that names the file and the
place, exit code 2, and writes nothing: the run folder is never created and the inputs are as they were.

The corruptions are drawn so that each breaks its file (a truncation cuts inside a record, or inside a YAML
document written in flow form; a wrong type replaces a required text); should one still validate, the command
stops where it would first write (a sentinel), and the example fails."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from loop.cli import app
from tests.loop.runs import ROOT, error_lines, folder_digest

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"]
CONTROL = [chr(c) for c in (0, 1, 7, 8, 0x0B, 0x0C, 0x1B, 0x1F, 0x7F)]
WRONG_TYPES = [5, 2.5, True, None, [1, "x"], {"nested": "x"}]
MEGABYTE = "x" * 1_000_000
JSONL = {  # file name -> (source of its first lines, the text field a wrong type or a megabyte goes into)
    "pool.jsonl": (ROOT / "data/prompts/harmful.jsonl", "prompt"),
    "eval.jsonl": (ROOT / "data/eval/harmful.jsonl", "prompt"),
    "labels.jsonl": (ROOT / "data/eval/refusal_labels.jsonl", "response"),
    "judge_pairs.jsonl": (ROOT / "data/eval/judge_pairs.jsonl", "better"),
}


class Validated(Exception):
    """Raised where a command would first write: the corrupted input was accepted."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of valid inputs: a config (JSON, which is YAML) naming a constitution, a prompt pool, an eval set
    and refusal labels; a judge set and a trainer spec; a model directory that only needs to exist."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    # In flow form (JSON is YAML): a block-style YAML file cut short can still be a valid, shorter document.
    constitution = yaml.safe_load((ROOT / "principles/default.yaml").read_text(encoding="utf-8"))
    (folder / "constitution.yaml").write_text(json.dumps(constitution, indent=1))
    for name, (source, _) in JSONL.items():
        (folder / name).write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:5]) + "\n")
    config = {"home": str(folder / "home"), "model": {"name": str(folder / "model")},
              "constitution": "constitution.yaml",
              "prompts": {"files": ["pool.jsonl"], "per_iteration": 2},
              "evaluation": {"per_set": 2, "sets": [{"name": "harmful", "file": "eval.jsonl", "role": "harmful"}],
                             "refusal": {"labels": "labels.jsonl"}}}
    (folder / "config.yaml").write_text(json.dumps(config, indent=1))
    spec = {"kind": "preference", "model_dir": str(folder / "model"), "data": str(folder / "pool.jsonl"),
            "output_dir": str(folder / "out")}
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    return folder


@pytest.fixture
def sentinels(monkeypatch):
    def accepted(*args, **kwargs):
        raise Validated("the corrupted input was accepted")

    monkeypatch.setattr("loop.pipeline.iteration.open_run_store", accepted)
    monkeypatch.setattr("loop.cli.judge.load_model", accepted)
    monkeypatch.setattr("policies.training.run.run", accepted)


def workspace(inputs: Path) -> Path:
    copy = Path(tempfile.mkdtemp(prefix="cai-bad-input-"))
    shutil.copytree(inputs, copy, dirs_exist_ok=True)
    return copy


def corrupt_jsonl(path: Path, field: str, data) -> int:
    """Corrupt one line of a JSONL file; returns its number."""
    lines = path.read_bytes().splitlines()
    index = data.draw(st.integers(0, len(lines) - 1), label="line")
    line = lines[index]
    kind = data.draw(st.sampled_from(["truncate", "wrong type", "not utf-8", "raw control", "escaped control",
                                      "megabyte"]), label="corruption")
    if kind == "truncate":  # the file ends inside this record
        lines = [*lines[:index], line[:data.draw(st.integers(1, len(line) - 1), label="cut")]]
    elif kind == "not utf-8":
        at = data.draw(st.integers(0, len(line)), label="at")
        lines[index] = line[:at] + data.draw(st.sampled_from(INVALID_UTF8), label="bytes") + line[at:]
    else:
        record = json.loads(line)
        if kind == "wrong type":
            record[field] = data.draw(st.sampled_from(WRONG_TYPES), label="value")
        elif kind == "megabyte":
            record[field] = MEGABYTE
        else:
            at = data.draw(st.integers(0, len(record[field])), label="at")
            record[field] = record[field][:at] + data.draw(st.sampled_from(CONTROL), label="char") + record[field][at:]
        text = json.dumps(record, ensure_ascii=False)
        if kind == "raw control":  # the character itself inside the JSON string, not its escape
            text = re.sub(r"\\u00([0-1][0-9a-f]|7f)", lambda m: chr(int(m.group(1), 16)), text)
        lines[index] = text.encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    return index + 1


def corrupt_text(path: Path, data) -> None:
    """Corrupt a YAML or JSON document: cut it short, or put bytes that are not UTF-8 or a control character in."""
    text = path.read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "not utf-8", "raw control"]), label="corruption")
    # Only inside the document: a cut at its very end could leave a complete, valid file.
    at = data.draw(st.integers(1, len(text.rstrip()) - 2), label="at")
    if kind == "truncate":
        path.write_bytes(text[:at])
    else:
        inserted = data.draw(st.sampled_from(INVALID_UTF8 if kind == "not utf-8" else [c.encode() for c in CONTROL
                                                                                       if c != "\x7f"]))
        path.write_bytes(text[:at] + inserted + text[at:])


def assert_refused(result_code: int, stderr: str, folder: Path, before: dict[str, str], changed: Path,
                   place: str) -> None:
    lines = error_lines(stderr)
    assert result_code == 2, stderr[:2000]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[:2000]
    assert len(lines[0]) <= 600, lines[0][:600]
    assert re.search(place, lines[0]), (place, lines[0])
    assert not (folder / "run").exists()
    after = folder_digest(folder)
    assert {k: v for k, v in after.items() if k != changed.name} == \
        {k: v for k, v in before.items() if k != changed.name}  # nothing written beside the corrupted file


def iterate(folder: Path):
    return CliRunner().invoke(app, ["iterate", "--config", str(folder / "config.yaml"), "--run-dir",
                                    str(folder / "run")])


@EXAMPLES
@given(data=st.data(), name=st.sampled_from(["pool.jsonl", "eval.jsonl", "labels.jsonl"]))
def test_a_corrupted_prompt_pool_eval_set_or_label_file(inputs, sentinels, data, name):
    folder = workspace(inputs)
    before = folder_digest(folder)
    line = corrupt_jsonl(folder / name, JSONL[name][1], data)
    result = iterate(folder)
    assert_refused(result.exit_code, result.stderr, folder, before, folder / name,
                   re.escape(f"{folder / name}:{line}") + r"\b")


@EXAMPLES
@given(data=st.data())
def test_a_corrupted_judge_set(inputs, sentinels, data):
    folder = workspace(inputs)
    before = folder_digest(folder)
    pairs = folder / "judge_pairs.jsonl"
    line = corrupt_jsonl(pairs, JSONL["judge_pairs.jsonl"][1], data)
    result = CliRunner().invoke(app, ["judge", "eval", "--pairs", str(pairs), "--model", str(folder / "model"),
                                      "--constitution", str(folder / "constitution.yaml")])
    assert_refused(result.exit_code, result.stderr, folder, before, pairs, re.escape(f"{pairs}:{line}") + r"\b")


@EXAMPLES
@given(data=st.data(), name=st.sampled_from(["config.yaml", "constitution.yaml"]))
def test_a_corrupted_config_or_constitution(inputs, sentinels, data, name):
    folder = workspace(inputs)
    before = folder_digest(folder)
    corrupt_text(folder / name, data)
    result = iterate(folder)
    assert_refused(result.exit_code, result.stderr, folder, before, folder / name,
                   re.escape(str(folder / name)) + r":\d+")


@EXAMPLES
@given(data=st.data(), field=st.sampled_from(["seed", "threads", "model", "prompts", "evaluation"]))
def test_a_config_field_of_the_wrong_type_or_a_megabyte_long(inputs, sentinels, data, field):
    folder = workspace(inputs)
    before = folder_digest(folder)
    config = json.loads((folder / "config.yaml").read_text())
    if data.draw(st.booleans(), label="megabyte"):
        config["model"]["name"], field = MEGABYTE, "model"
    else:
        wrong = ["abc", [1, 2], {"a": 1}, 2.5] if field in ("seed", "threads") else [5, "abc", [1, "x"], 2.5, True]
        config[field] = data.draw(st.sampled_from(wrong), label="value")
    (folder / "config.yaml").write_text(json.dumps(config))
    result = iterate(folder)
    assert_refused(result.exit_code, result.stderr, folder, before, folder / "config.yaml", rf"\b{field}\b")


@EXAMPLES
@given(data=st.data())
def test_a_corrupted_trainer_spec(inputs, sentinels, data, capsys):
    from policies.training.run import main

    folder = workspace(inputs)
    before = folder_digest(folder)
    spec = folder / "spec.json"
    if data.draw(st.booleans(), label="a field"):
        record = json.loads(spec.read_text())
        field = data.draw(st.sampled_from(["kind", "model_dir", "data"]), label="field")
        # A path may be any string; the trainer's kind is one of a few names (a megabyte one is not).
        wrong = {"megabyte": MEGABYTE} if field == "kind" else {}
        wrong |= {type(v).__name__: v for v in WRONG_TYPES[:-1]}
        record[field] = wrong[data.draw(st.sampled_from(sorted(wrong)), label="value")]
        spec.write_text(json.dumps(record))
        place = rf"\b{field}\b"
    else:
        corrupt_text(spec, data)
        place = r"line \d+|:\d+:\d+"
    capsys.readouterr()
    code = main([str(spec)])
    assert_refused(code, capsys.readouterr().err, folder, before, spec, place)
