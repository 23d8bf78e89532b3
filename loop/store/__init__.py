"""The store: the run's tables and the session (`models`), opening and checking a database (`database`), the run
lease (`lease`), shard planning and claims (`shards`) and schema migrations (`migrations`). The package exports
the tables and `Store`, which every room reads and writes through."""

from loop.store.models import (
    SCHEMA_VERSION,
    Base,
    Comparison,
    ConstitutionVersion,
    Contrast,
    ControlRequest,
    Critique,
    EvalComparison,
    EvalMetric,
    EvalResponse,
    Evaluation,
    GateDecision,
    Iteration,
    IterationInputs,
    Meta,
    Metric,
    Pair,
    Policy,
    PolicyMove,
    Review,
    Run,
    RunLease,
    Sample,
    SchemaTooNew,
    ShardClaim,
    StageRun,
    Store,
    count,
    utcnow,
)

__all__ = [
    "Base", "Comparison", "ConstitutionVersion", "Contrast", "ControlRequest", "Critique", "EvalComparison",
    "EvalMetric", "EvalResponse", "Evaluation", "GateDecision", "Iteration", "IterationInputs", "Meta", "Metric",
    "Pair", "Policy", "PolicyMove", "Review", "Run", "RunLease", "Sample", "SchemaTooNew", "ShardClaim", "StageRun",
    "Store", "SCHEMA_VERSION", "count", "utcnow",
]
