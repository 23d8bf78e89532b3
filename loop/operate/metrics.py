"""The per-iteration evaluation metrics and gate outcomes in the Prometheus text format, read from the store at
collection time (so a daemon or dashboard can serve the same collector on /metrics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select

from loop.store import EvalMetric, Evaluation, GateDecision, Iteration, Run, Store

OUTCOMES = ("promote", "reject", "halt")


class StoreCollector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        evaluation = GaugeMetricFamily("cai_eval_metric", "A candidate policy's evaluation metric, per iteration.",
                                       labels=["run", "iteration", "policy", "previous", "metric"])
        gate = GaugeMetricFamily("cai_gate_decision", "1 for the gates' outcome on an iteration's candidate.",
                                 labels=["run", "iteration", "candidate", "outcome"])
        decisions = CounterMetricFamily("cai_gate_decisions", "Gate decisions by outcome.", labels=["run", "outcome"])
        current = GaugeMetricFamily("cai_current_policy_version", "The policy that generates the next iteration.",
                                    labels=["run"])
        halted = GaugeMetricFamily("cai_run_halted", "1 while a halt waits for an operator.", labels=["run"])
        with self.store.session() as session:
            runs = {r.id: r for r in session.scalars(select(Run))}
            rows = session.execute(
                select(EvalMetric, Evaluation, Iteration.index)
                .join(Evaluation, EvalMetric.evaluation_id == Evaluation.id)
                .join(Iteration, Evaluation.iteration_id == Iteration.id)
                .order_by(Iteration.index, EvalMetric.id)).all()
            for metric, ev, index in rows:
                evaluation.add_metric([runs[ev.run_id].name, str(index), f"v{ev.policy_version}",
                                       f"v{ev.previous_version}", metric.name], metric.value)
            counts: Counter[tuple[int, str]] = Counter()
            open_halts = set()
            for decision, index in session.execute(
                    select(GateDecision, Iteration.index).join(Iteration, GateDecision.iteration_id == Iteration.id)
                    .order_by(Iteration.index)).all():
                candidate = "none" if decision.candidate_version is None else f"v{decision.candidate_version}"
                for outcome in OUTCOMES:
                    gate.add_metric([runs[decision.run_id].name, str(index), candidate, outcome],
                                    float(outcome == decision.outcome))
                counts[(decision.run_id, decision.outcome)] += 1
                if decision.outcome == "halt" and decision.resolved_at is None:
                    open_halts.add(decision.run_id)
            for run in runs.values():
                for outcome in OUTCOMES:
                    decisions.add_metric([run.name, outcome], counts[(run.id, outcome)])
                current.add_metric([run.name], run.current_policy)
                halted.add_metric([run.name], float(run.id in open_halts))
        yield from (evaluation, gate, decisions, current, halted)


def exposition(store: Store) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry).decode()
