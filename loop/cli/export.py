"""`cai export pairs` (the reviewed pairs for training elsewhere) and `cai export policy` (a policy as a model
folder that `transformers` loads and vLLM serves: `loop.operate.export_policy`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loop.cli.errors import fail, failures_reported
from loop.cli.options import RunDir, open_run, open_store
from loop.cli.output import console, out, setup_logging, size
from loop.operate.export import pair_records, write_pairs
from loop.operate.export_policy import VERSIONS, export_policy


def export_pairs(
    run_dir: RunDir,
    file_format: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Default: RUN_DIR/export/pairs.FORMAT.")] = None,
) -> None:
    """The run's pairs in TRL's conversational prompt/chosen/rejected layout, with target, principle_id,
    iteration and source columns; reviews applied (flipped pairs swapped, dropped ones left out)."""
    if file_format not in ("jsonl", "parquet"):
        fail(f"--format: {file_format!r} is not one of jsonl, parquet")
    store = open_store(run_dir)
    with store.session() as session:
        records = pair_records(session)
    store.dispose()
    path = write_pairs(records, output or run_dir / "export" / f"pairs.{file_format}", file_format)  # type: ignore[arg-type]
    out.print(f"{len(records)} pairs -> {path}", highlight=False)


def export_policy_command(
    version: Annotated[str, typer.Argument(help=f"The policy: {VERSIONS} (current: the promoted one; base: v0).")],
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--out", help="The model folder to write (absent or empty).")],
    merged: Annotated[bool, typer.Option("--merged/--adapter", help="The base with the adapter merged in (a plain "
                                         "transformers model), or the PEFT adapter alone.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
) -> None:
    """Write a policy as a model folder that `transformers` loads and vLLM serves as it is: safetensors, config,
    tokenizer and chat template (or the PEFT adapter), a model card and cai_export.json with its facts. Reads the
    run only; the folder appears whole or not at all."""
    # Loads torch: only this command may.
    from policies.runtime import quiet_model_libraries

    setup_logging(None)
    with failures_reported():
        store = open_run(run_dir, write=False)
        try:
            quiet_model_libraries()
            console.print(f"exporting policy {version} of {run_dir} ({'merged' if merged else 'adapter'}) ...",
                          highlight=False)
            facts, written = export_policy(store, run_dir, version, output, merged=merged, force=force)
        finally:
            store.dispose()
    for name, n in written:
        console.print(f"  {name}  {size(n)}", highlight=False)
    out.print(f"policy {facts['policy']} ({facts['format']}, base {facts['base_model']}) -> {output} "
              f"({len(written)} files, {size(sum(n for _, n in written))})", highlight=False)
