"""The stage registry: every stage once, in `StageName` order, on a known queue, importable without torch."""

import subprocess
import sys

from loop.pipeline.names import Queue, StageName
from loop.pipeline.stages import STAGES
from loop.service.broker import QUEUES


def test_the_registry_lists_each_stage_once_in_order_on_a_broker_queue():
    assert tuple(STAGES) == tuple(StageName)
    assert all(stage.queue in QUEUES and isinstance(stage.queue, Queue) for stage in STAGES.values())
    assert [s.name for s in STAGES.values() if s.sharded_by_samples] == ["generate", "critique", "judge"]


def test_the_registry_and_the_dashboard_queries_import_without_torch():
    code = ("import sys, loop.pipeline.stages, loop.dashboard.queries, loop.service.broker; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
