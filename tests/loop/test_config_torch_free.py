"""Validating a run config is pydantic only: `loop.config` and the trainer settings it embeds never load torch,
so `cai principles check` and every config check start fast."""

import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_loading_a_config_imports_no_torch():
    code = ("import sys, pathlib, loop.config; "
            f"loop.config.load_run_config(pathlib.Path({str(QUICKSTART)!r})); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_light_commands_import_no_torch():
    """`cai principles check` and `cai status` run the real command in-process, then look at what it loaded."""
    principles = QUICKSTART.parents[1] / "principles" / "default.yaml"
    for args in (["principles", "check", str(principles)], ["status", "--run-dir", "no-such-run"], ["--help"]):
        code = ("import sys\nfrom typer.testing import CliRunner\nfrom loop.cli import app\n"
                f"result = CliRunner().invoke(app, {args!r})\n"
                "sys.exit(3 if 'torch' in sys.modules else 0 if result.exit_code in (0, 1, 2) else 4)")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0, args
