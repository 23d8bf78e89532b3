"""`cai eval`: measure one policy against another (and the base) on the held-out sets, once per pair of versions.

An evaluation already recorded for the same pair is read back instead of measured again (unless asked to).
Measuring writes answers and metrics, so it holds the run lease like `cai iterate` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from constitution import load_constitution
from loop.config import load_run_config
from loop.operate.promotion import evaluation_metrics
from loop.progress import NullReporter, Reporter
from loop.store import Evaluation, Run, Store
from loop.store.lease import acquire
from loop.store.queries import policy, run_row


class UnknownPolicy(LookupError):
    """The run has no policy of that version."""


def evaluate_policy(store: Store, run_dir: Path, version: int, against: int | None = None, *,
                    recompute: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """The evaluation of policy `version` against `against` (default: the policy it was trained from): its ids,
    refusal classifier and metrics, measured now only if no evaluation of that pair is recorded or `recompute`."""
    with store.session() as session:
        run = run_row(session)
        row = policy(session, run.id, version)
        if row is None:
            raise UnknownPolicy(f"no policy v{version} in {run_dir}")
        other = against if against is not None else (row.parent_version or 0)
        found = None if recompute else session.scalar(
            select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.policy_version == version,
                                     Evaluation.previous_version == other).order_by(Evaluation.id.desc()))
    found_id = found.id if found is not None else _measure(store, run_dir, run, version, other, reporter)
    with store.session() as session:
        evaluation = session.get(Evaluation, found_id)
        return {"policy": f"v{version}", "against": f"v{other}", "evaluation_id": evaluation.id,
                "iteration_id": evaluation.iteration_id, "refusal_classifier": evaluation.refusal_classifier,
                "metrics": evaluation_metrics(session, evaluation.id)}


def _measure(store: Store, run_dir: Path, run: Run, version: int, other: int, reporter: Reporter | None) -> int:
    """Measure the pair under the run lease; the new evaluation's id."""
    # The evaluator loads torch: imported here so that importing this module (the CLI does) does not.
    from loop.evaluation.harness import Evaluator
    from policies.runtime import configure_threads

    config = load_run_config(run_dir / "config.yaml")
    configure_threads(config.threads)
    with acquire(store, run.name):
        evaluator = Evaluator.for_run(config, store, run_dir, run.id, load_constitution(config.constitution),
                                      reporter or NullReporter())
        return evaluator.evaluate(version, other)
