"""The evaluate stage: measure the policy this iteration trained against π_i and the base (the gates then
decide on it when the iteration finishes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loop.store import Iteration
from loop.store.queries import policy_of_iteration

if TYPE_CHECKING:
    from loop.pipeline.context import IterationContext


def evaluate(ctx: IterationContext) -> None:
    from loop.evaluation.harness import Evaluator  # loads the model code: not at the stage registry's import

    with ctx.store.session() as session:
        trained = policy_of_iteration(session, ctx.iteration_id)
        candidate = trained.version if trained is not None else None
        previous = session.get(Iteration, ctx.iteration_id).policy_version
    if candidate is None:  # nothing was trained: nothing to measure
        with ctx.store.session() as session:
            ctx.complete(session)
        return
    ctx.engines.release()  # the evaluation loads the base once, with every policy it needs as an adapter
    Evaluator.for_run(ctx.config, ctx.store, ctx.run_dir, ctx.run_id, ctx.constitution, ctx.reporter,
                      served=ctx.engines.served_evaluation()).evaluate(
        candidate, previous, iteration_id=ctx.iteration_id, complete=ctx.complete)
