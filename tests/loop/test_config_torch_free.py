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
