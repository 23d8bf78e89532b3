"""Helpers for tests that drive `cai` on a real run folder: a tiny run config, the real CLI as a process, and
digests of a run folder and of its database's content."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from loop.evaluation.gates import GATES
from loop.store.database import read_only_connection

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(model_dir: Path, home: Path, **sections: Any) -> dict[str, Any]:
    """An iteration on the tiny random model that still runs every stage and a real trainer child."""
    config: dict[str, Any] = {
        "home": str(home), "seed": 0, "threads": 1,
        "model": {"name": str(model_dir), "device": "cpu"},
        "prompts": {"files": [str(ROOT / "data/prompts/harmful.jsonl"), str(ROOT / "data/prompts/borderline.jsonl")],
                    "per_iteration": 3},
        "generation": {"max_new_tokens": 6}, "critique": {"max_new_tokens": 6, "rounds": 2},
        # A random tiny model puts ~1e-5 on any label token; keep every pair so every iteration trains.
        "judge": {"margin": 0.0, "min_label_prob": 1e-12},
        "pairs": {"sampler": {"length_tolerance": None}},
        "train": {"preference": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-2},
                  "lora": {"r": 4, "alpha": 8}},
        # A small held-out evaluation, gates open: these runs are about the loop's safety, not the model.
        "evaluation": {"per_set": 2, "max_new_tokens": 5, "refusal": {"classifier": "lexical"}},
        "gates": {g.setting: None for g in GATES},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cai_env(**extra: str) -> dict[str, str]:
    """The environment of a `cai` child: this one without CAI_ variables (they would change the run), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAI_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def cai_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "loop.cli", *args]


def run_cai(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cai_command(*args), cwd=ROOT, env=env or cai_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file's content hash, but cai.log (a failure adds its line there) and SQLite's -shm (the shared-memory
    index of a WAL database, where every reader, even a read-only one, marks what it reads: not data)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "cai.log" and not p.name.endswith("-shm")}


def database_digest(path: Path) -> str:
    """The hash of the database's SQL dump (its content, whatever the pages look like)."""
    connection = read_only_connection(path)
    try:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
    finally:
        connection.close()


def save_random_adapter(model_dir: Path, target: Path, seed: int) -> None:
    """A LoRA adapter of random, non-zero weights on `model_dir`: a policy whose answers differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(target, safe_serialization=True)
