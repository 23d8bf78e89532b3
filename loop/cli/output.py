"""Where the command line writes: `console` (stderr) for progress, notices and failures, `out` (stdout) for
results a script may read, and the logging each command sets up (warnings on the terminal, RUN_DIR/cai.log)."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)
out = Console()

FAILURES = logging.getLogger("cai.failures")
"""The line each failure leaves in cai.log (stderr gets it from `loop.cli.errors`, not from the console handler)."""


class _RunLog(logging.FileHandler):
    """RUN_DIR/cai.log, written only once the run folder exists: a failed start never creates the folder."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / "cai.log", delay=True)
        self.run_dir = run_dir

    def emit(self, record: logging.LogRecord) -> None:
        if self.run_dir.is_dir():
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """A line the log cannot take (a full disk) is dropped: the terminal gets the failure's one line, not a
        logging traceback per record."""


def setup_logging(run_dir: Path | None) -> None:
    terminal = RichHandler(console=console, level=logging.WARNING, show_path=False)
    terminal.addFilter(lambda record: record.name != FAILURES.name)
    handlers: list[logging.Handler] = [terminal]
    if run_dir is not None:
        file = _RunLog(run_dir)
        file.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"))
        file.setLevel(logging.INFO)
        handlers.append(file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def size(n: int) -> str:
    """Bytes as people read them: 950 B, 19.8 KB, 6.4 MB, 1.1 GB."""
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
