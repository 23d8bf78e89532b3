from pathlib import Path

from typer.testing import CliRunner

from loop.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["status", "--run-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no run in" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples:\n  - id: Bad Id\n")
    check = runner.invoke(app, ["principles", "check", str(bad)])
    assert check.exit_code == 1
    assert f"{bad}:3:9: error: principles[0].id:" in check.output
    ok = runner.invoke(app, ["principles", "check", str(ROOT / "principles")])
    assert ok.exit_code == 0 and "ok: " in ok.output
