"""The one entry point of every trainer: `python -m policies.training SPEC.json`.

The same command runs single-process on a CPU, or under `torchrun --nproc_per_node N -m policies.training SPEC.json`
(or the `deepspeed` launcher) with a ZeRO config on GPUs. It reads its data from files named in the spec,
writes the adapter to `output_dir/adapter` and `output_dir/result.json`, and prints progress lines
(`CAI_PROGRESS {...}`) that the launching process turns into progress bars.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

# The trainer modules register themselves in TRAINERS when imported.
import policies.training.grpo
import policies.training.ppo
import policies.training.preference
import policies.training.reward_model
import policies.training.sft  # noqa: F401
from policies.adapters import attach_trainable_adapter, save_adapter
from policies.files import NotUtf8Error, atomic_write_text, read_utf8
from policies.models import load_model
from policies.runtime import configure_threads, quiet_model_libraries
from policies.training.distributed import World, current_world
from policies.training.optimization import StepLog, emit_progress
from policies.training.spec import TrainSpec, read_jsonl
from policies.training.trainer import TRAINERS, BuildContext

log = logging.getLogger(__name__)


def _progress(kind: str, world: World):
    def on_step(step: StepLog) -> None:
        # Every rank takes the step; only rank 0 reports it, so the parent records each step once.
        if world.is_main:
            emit_progress("step", {"trainer": kind, "step": step.step, "tokens_per_s": step.tokens_per_s,
                                   **step.metrics})
    return on_step


def run(spec: TrainSpec, world: World | None = None) -> dict[str, Any]:
    world = world or current_world()
    configure_threads(spec.threads)
    quiet_model_libraries()
    entry = TRAINERS[spec.kind]
    settings = getattr(spec, spec.kind)
    torch.manual_seed(settings.seed)  # fixes the fresh adapter's random init (and the value or reward head)
    data = [entry.parse(r) for r in read_jsonl(spec.data)]
    lm, tokenizer = load_model(spec.model_dir, dtype=spec.dtype, device=spec.device)
    lm = attach_trainable_adapter(lm, spec.lora, spec.parent_adapter)
    if world.world_size > 1 and spec.deepspeed is None:
        raise ValueError("more than one process needs a DeepSpeed config: set `deepspeed: zero2` (or zero3)")

    loop_options = {"checkpoint_dir": spec.checkpoint_dir, "rank": world.rank, "world_size": world.world_size,
                    "deepspeed": spec.deepspeed if world.world_size > 1 else None}
    trainer = entry.build(BuildContext(spec, lm, tokenizer, loop_options))
    if world.is_main:
        emit_progress("start", {"trainer": spec.kind, "examples": len(data), "threads": torch.get_num_threads(),
                                "interop_threads": torch.get_num_interop_threads()})
    result = trainer.fit(data, _progress(spec.kind, world))
    if world.is_main:
        save_adapter(lm, spec.adapter_dir, *trainer.heads)
        atomic_write_text(spec.result_path, json.dumps({"kind": spec.kind, "metrics": result.metrics}, indent=1))
        emit_progress("done", {"trainer": spec.kind})
    return result.metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m policies.training SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r")
    spec = read_spec(Path(argv[0]))
    if isinstance(spec, str):  # bad input: one line, exit 2, nothing written
        print(f"error: {spec[:480]}", file=sys.stderr)
        return 2
    run(spec)
    return 0


def read_spec(path: Path) -> TrainSpec | str:
    """The spec, or the line that says what is wrong with its file (and where)."""
    try:
        return TrainSpec.model_validate_json(read_utf8(path))
    except OSError as exc:
        return f"{path}: cannot read the spec: {exc.strerror or exc}"
    except NotUtf8Error as exc:
        return str(exc)
    except ValidationError as exc:
        return f"{path}: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())

