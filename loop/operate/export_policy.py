"""`cai export policy`: one policy of a run as a model folder that works outside cai.

Merged (the default): the base model with the policy's LoRA adapter folded into its weights, a plain
`transformers` folder that vLLM serves as it is. Adapter: the PEFT adapter alone, its config naming a base a user
can resolve. Either way the folder carries a model card (`README.md`) and `cai_export.json` with the policy's
facts from the store: run, version, parent, iteration, trainer, constitution hash, base model, evaluation and gate
decision. The folder is written beside `--out` and renamed onto it, so a reader never sees half an export.

Torch-free at import: the weights are touched only inside `policies.adapters`' functions.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loop.operate.evaluate import UnknownPolicy
from loop.operate.promotion import evaluation_metrics
from loop.store import Evaluation, Iteration, Policy, Run, Store
from loop.store.queries import decision_of_iteration, evaluation_of_iteration, policy, run_policies, run_row
from policies.adapters import copy_adapter, save_merged
from policies.files import atomic_directory
from policies.models import DEFAULT_MODEL, base_model_reference, converted_from, resolve_model_dir

FACTS_FILE = "cai_export.json"
VERSIONS = "current, base, N or vN"


class ExportRefused(ValueError):
    """The export would replace a folder it must not, or asks for what the policy does not have."""


def resolve_version(session: Session, run: Run, text: str) -> int:
    """`current` (the run's promoted policy), `base` (v0), `N` or `vN` as a recorded version; anything else, or a
    version the run does not have, is an `UnknownPolicy` that lists the run's versions."""
    word = text.strip().lower()
    known = [p.version for p in run_policies(session, run.id)] or [0]
    listed = ", ".join(f"v{v}" for v in known)
    if word == "current":
        return run.current_policy
    if word in ("base", "v0", "0"):
        return 0
    try:
        version = int(word.removeprefix("v"))
    except ValueError:
        raise UnknownPolicy(f"not a policy version: {text!r} (expected {VERSIONS}; the run has {listed})") from None
    if version not in known:
        raise UnknownPolicy(f"no policy v{version} in this run (it has {listed}; `current` is "
                            f"v{run.current_policy})")
    return version


def policy_adapter(session: Session, run_dir: Path, version_text: str) -> tuple[Run, int, Path | None]:
    """The run, the version `version_text` names (`resolve_version`) and that policy's adapter directory (None for
    the base, or a policy recorded without one)."""
    run = run_row(session)
    if run is None:
        raise UnknownPolicy(f"the run in {run_dir} has no policies yet (no iteration has opened)")
    version = resolve_version(session, run, version_text)
    row = policy(session, run.id, version)
    return run, version, run_dir / row.adapter_path if version and row is not None and row.adapter_path else None


def _evaluation(session: Session, run_id: int, row: Policy) -> dict[str, Any] | None:
    """The policy's evaluation: its iteration's (against its parent), else the latest `cai eval` of it."""
    found = evaluation_of_iteration(session, row.iteration_id) if row.iteration_id is not None else None
    if found is None or found.policy_version != row.version:
        found = session.scalar(select(Evaluation).where(Evaluation.run_id == run_id,
                                                        Evaluation.policy_version == row.version)
                               .order_by(Evaluation.id.desc()))
    if found is None:
        return None
    return {"against": f"v{found.previous_version}", "refusal_classifier": found.refusal_classifier,
            "metrics": evaluation_metrics(session, found.id)}


def _gate(session: Session, row: Policy) -> dict[str, Any] | None:
    decision = decision_of_iteration(session, row.iteration_id) if row.iteration_id is not None else None
    if decision is None or decision.candidate_version != row.version:
        return None
    return {"outcome": decision.outcome, "reasons": [c["reason"] for c in decision.checks if not c["passed"]]}


def policy_facts(session: Session, run_dir: Path, version: int) -> dict[str, Any]:
    """What the card and `cai_export.json` say of policy `version`: names and numbers, never a path of this
    machine (the run is named by its folder's name, the base by `policies.models.base_model_reference`)."""
    run = run_row(session)
    row = policy(session, run.id, version) or Policy(version=0, parent_version=None, adapter_path=None)
    iteration = session.get(Iteration, row.iteration_id) if row.iteration_id is not None else None
    model = run.config.get("model") or {}
    return {
        "run": Path(os.path.abspath(run_dir)).name,
        "policy": f"v{version}",
        "parent": None if row.parent_version is None else f"v{row.parent_version}",
        "iteration": iteration.index if iteration is not None else None,
        "trainer": row.trainer,
        "constitution_hash": row.constitution_hash or (iteration.constitution_hash if iteration else None),
        "base_model": base_model_reference(model.get("name") or DEFAULT_MODEL),
        "current": run.current_policy == version,
        "evaluation": _evaluation(session, run.id, row) if version else None,
        "gate": _gate(session, row) if version else None,
    }


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(facts: dict[str, Any], folder: str) -> str:
    """The folder's README.md: a Hugging Face model card (front matter, then the policy's facts and how to use
    it) that names the folder by its own name only."""
    merged = facts["format"] == "merged"
    tags = ["cai", "constitutional-ai", "rlaif", *([] if merged else ["lora"])]
    lines = ["---", f"base_model: {facts['base_model']}", f"library_name: {'transformers' if merged else 'peft'}",
             "tags:", *(f"- {tag}" for tag in tags), "---", "",
             f"# {facts['run']}: policy {facts['policy']}", "",
             ("The base model with the policy's LoRA adapter merged into its weights" if merged and facts["parent"]
              else "The base model itself (v0: no adapter)" if merged else "The policy's LoRA adapter (PEFT)")
             + f", exported by `cai export policy` from the run `{facts['run']}`.", "",
             "| | |", "|---|---|"]
    rows = {"run": facts["run"], "policy": facts["policy"] + (" (current)" if facts["current"] else ""),
            "parent": facts["parent"], "iteration": facts["iteration"], "trainer": facts["trainer"],
            "constitution hash": facts["constitution_hash"], "base model": facts["base_model"],
            "base weights": facts["base_model_source"], "dtype": facts["dtype"], "exported": facts["exported_at"]}
    lines += [f"| {name} | {'-' if value is None else f'`{value}`'} |" for name, value in rows.items()]
    if facts["base_model_source"] and not merged:
        lines += ["", f"The adapter was trained on the weights dequantized from `{facts['base_model_source']}`; "
                  f"loaded onto `{facts['base_model']}` it is close to, not exactly, the run's policy. The merged "
                  "export (`cai export policy ... --merged`) is exact."]
    evaluation, gate = facts["evaluation"], facts["gate"]
    if evaluation is not None:
        lines += ["", f"## Evaluation (against {evaluation['against']}, refusal classifier "
                  f"{evaluation['refusal_classifier']})", "", "| metric | value |", "|---|---|",
                  *(f"| {name} | {_number(value)} |" for name, value in evaluation["metrics"].items())]
    if gate is not None:
        lines += ["", f"## Gate decision: {gate['outcome']}", "",
                  *([f"- {reason}" for reason in gate["reasons"]] or ["No gate failed."])]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if merged:
        lines += ["", f'model = AutoModelForCausalLM.from_pretrained("{folder}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{folder}")', "```", "",
                  f"Serve it with vLLM: `vllm serve {folder}`."]
    else:
        lines += ["from peft import PeftModel", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{facts["base_model"]}")',
                  f'model = PeftModel.from_pretrained(base, "{folder}")', "```", "",
                  f"Serve it with vLLM: `vllm serve {facts['base_model']} --enable-lora "
                  f"--lora-modules {facts['run']}-{facts['policy']}={folder}`."]
    return "\n".join(lines) + "\n"


def _check_target(out: Path, run_dir: Path, force: bool) -> None:
    target, run = Path(os.path.abspath(out)), Path(os.path.abspath(run_dir))
    if target == run or target in run.parents:
        raise ExportRefused(f"--out {out} holds the run folder {run_dir}: choose a folder of its own")
    if target.is_file():
        raise ExportRefused(f"--out {out} is a file: name a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ExportRefused(f"--out {out} is not empty; add --force to replace it")


def export_policy(store: Store, run_dir: Path, version_text: str, out: Path, *, merged: bool = True,
                  force: bool = False) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Write policy `version_text` of the run in `run_dir` to the model folder `out` (merged or as an adapter);
    its facts and the files written, with their sizes in bytes."""
    with store.session() as session:
        run, version, adapter = policy_adapter(session, run_dir, version_text)
        facts = policy_facts(session, run_dir, version)
        model = run.config.get("model") or {}
        home = Path(os.environ.get("CAI_HOME") or run.config.get("home") or "~/.cache/cai").expanduser()
    if version and adapter is None:
        raise ExportRefused(f"policy v{version} has no adapter recorded in {run_dir}")
    if not merged and adapter is None:
        raise ExportRefused("the base model (v0) has no adapter: export it merged (without --adapter)")
    _check_target(out, run_dir, force)
    model_dir = resolve_model_dir(model.get("name") or DEFAULT_MODEL, home)
    facts = {**facts, "format": "merged" if merged else "adapter",
             "dtype": model.get("dtype", "float32") if merged else None,
             "base_model_source": converted_from(model_dir), "exported_at": datetime.now(UTC).isoformat()}
    target = Path(os.path.abspath(out))
    with atomic_directory(target) as staging:
        if merged:
            save_merged(model_dir, adapter, staging, dtype=facts["dtype"])
        else:
            copy_adapter(adapter, staging, base_model=facts["base_model"])
        (staging / "README.md").write_text(model_card(facts, target.name), encoding="utf-8")
        (staging / FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        written = sorted((str(p.relative_to(staging)), p.stat().st_size) for p in staging.rglob("*") if p.is_file())
    return facts, written
