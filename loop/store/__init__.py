"""The store: the run's tables (`models`), the engine and sessions (`session`), the shared selects (`queries`),
opening and checking a run folder's database (`database`), the run lease (`lease`), shard planning and claims
(`shards`) and schema migrations (`migrations`). The package exports the tables and `Store`, which every room
reads and writes through; the modules inside it import each other directly, never this package."""

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
    Replay,
    Review,
    RewardScore,
    Run,
    RunLease,
    Sample,
    SampledAnswer,
    ShardClaim,
    StageRun,
    utcnow,
)
from loop.store.queries import count
from loop.store.session import SchemaTooNew, Store

__all__ = [
    "Base", "Comparison", "ConstitutionVersion", "Contrast", "ControlRequest", "Critique", "EvalComparison",
    "EvalMetric", "EvalResponse", "Evaluation", "GateDecision", "Iteration", "IterationInputs", "Meta", "Metric",
    "Pair", "Policy", "PolicyMove", "Replay", "Review", "RewardScore", "Run", "RunLease", "Sample", "SampledAnswer",
    "SchemaTooNew", "ShardClaim", "StageRun",
    "Store", "SCHEMA_VERSION", "count", "utcnow",
]
