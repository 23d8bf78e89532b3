"""`critique` talks to models only through the torch-free `Generator` protocol, so importing it never loads torch."""

import subprocess
import sys


def test_critique_imports_without_torch():
    code = ("import sys, critique, critique.judge, critique.revision, critique.pairs, policies.serving; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
