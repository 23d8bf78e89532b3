"""Process-wide torch settings that must be chosen deliberately, not left to defaults."""

from __future__ import annotations

import contextlib
import os

import torch


def configure_threads(threads: int | None) -> int:
    """Use exactly `threads` intra-op threads (default: all cores) and one inter-op thread.

    Torch's defaults plus a tokenizer pool oversubscribe a small machine; one deliberate count avoids that.
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # The inter-op count can only be set once per process, before parallel work starts.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return threads


def quiet_model_libraries() -> None:
    """Keep the terminal for our own progress bars: no per-load progress bars or deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
