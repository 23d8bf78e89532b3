"""The `cai` command line: `app` is the console script."""

from loop.cli.app import app, main

__all__ = ["app", "main"]
