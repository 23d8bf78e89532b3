"""The dashboard's pure parts: who counts as an operator, CSRF tokens, chart markup, verdicts and drop reasons."""

from __future__ import annotations

from starlette.requests import Request

from critique.pairs import PairRules
from loop.dashboard.charts import bar_chart, line_chart, task_accuracy_chart
from loop.dashboard.security import SESSION_COOKIE, Access, Operator
from loop.dashboard.verdicts import drop_reason, verdict_of
from loop.store import Comparison, Sample


def request(headers: dict[str, str] | None = None, cookie: str | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookie is not None:
        raw.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_bearer_and_session_operators_and_what_is_refused():
    access = Access("s3cret")
    assert access.operator(request()) is None
    assert access.operator(request({"Authorization": "Bearer wrong"})) is None
    assert access.operator(request({"Authorization": "Bearer s3cret", "X-CAI-Operator": "ann"})) == \
        Operator("ann", "bearer")
    cookie = access.session_cookie("bob")
    assert access.operator(request(cookie=cookie)) == Operator("bob", "session")
    forged = cookie.split(".")[0] + "." + "0" * 64
    assert access.operator(request(cookie=forged)) is None
    # another token (a restarted dashboard with a new one) ends every session
    assert Access("other").operator(request(cookie=cookie)) is None
    assert Access(None).operator(request({"Authorization": "Bearer s3cret"})) is None and Access(None).read_only


def test_csrf_is_needed_for_sessions_only_and_bound_to_the_operator():
    access = Access("s3cret")
    bob, ann = Operator("bob", "session"), Operator("ann", "session")
    assert access.csrf_ok(bob, access.csrf_token(bob))
    assert not access.csrf_ok(bob, "") and not access.csrf_ok(bob, access.csrf_token(ann))
    assert access.csrf_ok(Operator("api", "bearer"), "")


def test_charts_escape_their_text_and_scale_points_into_the_plot():
    svg = str(line_chart("<script>x</script>", [(1, 0.2), (2, 0.8)]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<circle") == 2 and "style=" not in svg
    assert "no data yet" in str(line_chart("empty", []))
    assert str(line_chart("flat", [(1, 0.0)])).count("<circle") == 1  # one point, no division by zero


TASK_METRICS = {"task_accuracy_arithmetic": 0.5, "previous_task_accuracy_arithmetic": 0.25,
                "base_task_accuracy_arithmetic": 0.0, "task_accuracy_format": 1.0, "previous_task_accuracy_format": 1.0,
                "task_accuracy": 0.75, "previous_task_accuracy": 0.625, "base_task_accuracy": 0.0,
                "task_accuracy_drop": -0.125, "harmful_safe_rate": 0.4}


def test_the_task_accuracy_chart_has_a_bar_per_set_and_policy_on_a_fixed_scale():
    svg = str(task_accuracy_chart(TASK_METRICS))
    # arithmetic and format, and all of them together: candidate, previous and base each (base unmeasured on format)
    assert svg.count('class="bar bar-candidate"') == 3 and svg.count('class="bar bar-previous"') == 3
    assert svg.count('class="bar bar-base"') == 2 and "drop" not in svg
    assert "<title>arithmetic, previous: 0.25</title>" in svg and "<title>all, candidate: 0.75</title>" in svg
    assert 'height="126.0"' in svg  # format's 1.0 fills the plot: the scale is 0..1 whatever the values
    assert "style=" not in svg
    one_set = str(task_accuracy_chart({k: v for k, v in TASK_METRICS.items() if "format" not in k}))
    assert "all," not in one_set and one_set.count("<rect") == 3  # one set: no "all" group repeating it
    assert str(task_accuracy_chart({"harmful_safe_rate": 0.4})) == ""  # no task set: no chart
    assert "&lt;b&gt;" in str(bar_chart("<b>", [("<b>", [("x", 0.5)])])) and "no data yet" in str(bar_chart("e", []))


def test_the_iteration_page_shows_task_accuracy_when_measured(tmp_path):
    from fastapi.testclient import TestClient

    from loop.dashboard.app import create_app
    from loop.store import EvalMetric, Evaluation

    store = run_store(tmp_path, iterations=2)
    with store.session() as session:
        for iteration, metrics in ((1, TASK_METRICS), (2, {"harmful_safe_rate": 0.5})):
            evaluation = Evaluation(run_id=1, iteration_id=iteration, policy_version=iteration, previous_version=0,
                                    refusal_classifier="lexical", wall_s=1.0)
            session.add(evaluation)
            session.flush()
            session.add_all(EvalMetric(evaluation_id=evaluation.id, name=k, value=v) for k, v in metrics.items())
    client = TestClient(create_app(tmp_path, store=store))
    page = client.get("/iterations/1")
    assert page.status_code == 200 and 'id="task-accuracy"' in page.text and "bar-candidate" in page.text
    assert 'id="task-accuracy"' not in client.get("/iterations/2").text
    store.dispose()


def comparison(p_b: float, abstained: bool = False, suspect: bool = False) -> Comparison:
    return Comparison(p_b=p_b, p_b_when_first=p_b, p_b_when_second=p_b, abstained=abstained, suspect=suspect)


def test_verdicts_and_the_reasons_a_sample_became_no_pair():
    assert [verdict_of(comparison(p)) for p in (0.7, 0.3, 0.5)] == ["revision", "response", "tie"]
    assert verdict_of(comparison(0.9, abstained=True)) == "abstained" and verdict_of(None) is None
    sample = Sample(prompt="p", response="an answer", revision="a better answer")
    judged, revision = PairRules("judged", 0.1, (0.0, 1.0)), PairRules("revision", 0.1, (0.0, 1.0))
    assert drop_reason(sample, None, 0.1, judged).startswith("not judged")
    assert drop_reason(sample, comparison(0.9, abstained=True), 0.1, judged).startswith("abstained")
    assert drop_reason(sample, comparison(0.55), 0.1, judged).startswith("not-confident")
    assert drop_reason(sample, comparison(0.9, suspect=True), 0.1, judged).startswith("injection-suspect")
    assert drop_reason(sample, comparison(0.3), 0.1, revision).startswith("judge-disagrees")
    assert drop_reason(Sample(prompt="p", response="same", revision="same"), comparison(0.9), 0.1,
                       judged).startswith("equal")
    assert "de-duplication" in drop_reason(sample, comparison(0.9), 0.1, judged)
    assert "de-duplication" in drop_reason(sample, comparison(0.45), 0.1, revision)


def run_store(folder, iterations: int = 1):
    """A store holding run "r" (id 1) and its first iterations (ids 1..N), as `cai iterate` opens them."""
    from loop.store import Iteration, Run, Store

    store = Store(f"sqlite:///{folder / 'cai.db'}")
    with store.session() as session:
        run = Run(name="r", config={})
        session.add(run)
        session.flush()
        session.add_all(Iteration(run_id=run.id, index=index, policy_version=0, constitution_hash="h")
                        for index in range(1, iterations + 1))
    return store


def test_progress_names_the_running_stage_only_while_someone_holds_the_run(tmp_path):
    import os
    import socket
    import time

    from loop.dashboard.queries import progress
    from loop.store import RunLease, StageRun, utcnow

    store = run_store(tmp_path)
    with store.session() as session:
        session.add(StageRun(iteration_id=1, stage="generate", wall_s=1.5))
    with store.session() as session:
        idle = progress(session)
    assert idle["lease"] is None and idle["iteration"]["running"] is None
    assert [s["done"] for s in idle["iteration"]["stages"]][:2] == [True, False]
    with store.session() as session:
        session.add(RunLease(run="r", token="t", host=socket.gethostname(), pid=os.getpid(), started_at=utcnow(),
                             heartbeat=time.time()))
    with store.session() as session:
        busy = progress(session)
    assert busy["iteration"]["running"] == "critique" and f"pid {os.getpid()}" in busy["lease"]["holder"]
    with store.session() as session:  # a holder killed with -9 leaves its row: nobody works on the run
        session.get(RunLease, "r").pid = 2 ** 22 + 7
    with store.session() as session:
        assert progress(session)["lease"] is None
    store.dispose()


def test_alarms_name_an_open_halt_and_a_rejected_candidate(tmp_path):
    from loop.dashboard.queries import alarms
    from loop.store import GateDecision, Run, utcnow

    failed = {"gate": "kl", "metric": "kl_vs_reference", "value": 200.0, "op": "<=", "limit": 120.0,
              "severity": "halt", "passed": False, "reason": "kl_vs_reference = 200 (limit <= 120)"}
    store = run_store(tmp_path, iterations=2)
    with store.session() as session:
        session.add(GateDecision(run_id=1, iteration_id=1, candidate_version=1, current_version=0,
                                 outcome="halt", checks=[failed]))
    with store.session() as session:
        found = alarms(session, session.get(Run, 1))
    assert len(found) == 1 and found[0].startswith("halted: candidate v1") and "limit <= 120" in found[0]
    with store.session() as session:
        session.get(GateDecision, 1).resolved_at = utcnow()
        session.add(GateDecision(run_id=1, iteration_id=2, candidate_version=2, current_version=0,
                                 outcome="reject", checks=[{**failed, "severity": "reject"}]))
    with store.session() as session:
        assert alarms(session, session.get(Run, 1)) == [
            "latest candidate v2 rejected: kl_vs_reference = 200 (limit <= 120)"]
    store.dispose()


def test_a_folder_without_a_run_is_refused_with_one_line(tmp_path):
    from tests.loop.runs import error_lines, run_cai

    result = run_cai("dashboard", "--run-dir", str(tmp_path / "nothing"), timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: no run in {tmp_path / 'nothing'} (no cai.db with a run); start one "
                                          f"with `cai iterate --config FILE --run-dir {tmp_path / 'nothing'}`"]
    assert not (tmp_path / "nothing").exists()


def test_sample_pages_are_read_in_sql_and_filtered_pages_agree(tmp_path):
    from loop.dashboard.queries import SampleFilter, samples
    from loop.store import Comparison, Sample

    store = run_store(tmp_path)
    with store.session() as session:
        for i in range(7):
            sample = Sample(iteration_id=1, prompt_id=f"p{i}", prompt_category="benign", prompt=f"q{i}",
                            response="a", revision="b", policy_version=0, constitution_hash="h")
            session.add(sample)
            session.flush()
            session.add(Comparison(sample_id=sample.id, principle_id="x", judge="j", p_b_when_second=0.9,
                                   p_b_when_first=0.9, p_b=0.9 if i % 2 else 0.1, constitution_hash="h"))
    with store.session() as session:
        page = samples(session, SampleFilter(), limit=3, offset=3)
        assert page["total"] == 7 and [s["prompt"] for s in page["samples"]] == ["q3", "q4", "q5"]
        revised = samples(session, SampleFilter(verdict="revision"), limit=2, offset=1)
        assert revised["total"] == 3 and [s["prompt"] for s in revised["samples"]] == ["q3", "q5"]
    store.dispose()


def test_a_local_dashboard_answers_only_to_local_host_names(tmp_path):
    from fastapi.testclient import TestClient

    from loop.dashboard.app import LOOPBACK_HOSTS, create_app

    store = run_store(tmp_path)
    client = TestClient(create_app(tmp_path, store=store, allowed_hosts=LOOPBACK_HOSTS))
    assert client.get("/api/progress", headers={"Host": "127.0.0.1:8765"}).json()["run"] == "r"
    assert client.get("/api/progress", headers={"Host": "evil.example:8765"}).status_code == 400
    store.dispose()


def test_the_dashboard_reads_the_database_cai_database_url_names(tmp_path, monkeypatch):
    from loop.store import Run, Store
    from loop.store.database import open_run_reader
    from tests.loop.services import postgres_database

    with postgres_database("cai_dashboard_test") as url:
        writer = Store(url)
        with writer.session() as session:
            session.add(Run(name="served", config={}))
        monkeypatch.setenv("CAI_DATABASE_URL", url)
        reader = open_run_reader(tmp_path / "no-folder-needed")
        try:
            with reader.session() as session:
                assert session.query(Run.name).scalar() == "served"
        finally:
            reader.dispose()
            writer.dispose()
