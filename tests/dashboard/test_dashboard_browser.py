"""The dashboard in a real browser on a real run: every page renders, filters narrow the sample list, a review
persists and shows on its sample, controls need the token and take effect, and payloads in model text stay text."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from loop.operate.summary import latest_reviews
from loop.store import Pair, Run
from loop.store.database import open_run_reader
from tests.dashboard.conftest import (
    IMG_PAYLOAD,
    SCRIPT_PAYLOAD,
    TOKEN,
    log_in,
    shot,
    start_dashboard,
    stop,
    submit,
)
from tests.loop.runs import database_digest

pytestmark = pytest.mark.slow  # two tiny `cai iterate` runs for the session, and a browser

PAGES = {
    "overview": ("/", "Run "),
    "iteration": ("/iterations/2", "Iteration 2"),
    "samples": ("/samples", "Samples"),
    "principles": ("/principles", "Principles"),
    "review": ("/review", "Review queue"),
    "controls": ("/controls", "Controls"),
}


def read(run_dir, fn):
    store = open_run_reader(run_dir)
    try:
        with store.session() as session:
            return fn(session)
    finally:
        store.dispose()


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_with_live_progress(dashboard, page, name):
    path, heading = PAGES[name]
    response = page.goto(dashboard + path)
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.locator("h1").first.inner_text().startswith(heading)
    # live progress is filled in by the polling script (it starts as "loading…"); waited for by selector, since
    # a polled wait_for_function evaluates a string, which the page's CSP rightly refuses
    page.wait_for_selector("#live[data-updated]", state="attached")
    assert "run run" in page.locator("#live").inner_text()
    assert page.watch.errors == [] and page.watch.dialogs == []
    shot(page, f"page-{name}")


def test_iteration_page_shows_stages_charts_losses_and_the_gate(dashboard, page):
    page.goto(dashboard + "/iterations/2")
    stages = page.locator("#stages").inner_text()
    for stage in ("generate", "critique", "judge", "pairs", "train", "evaluate"):
        assert stage in stages
    assert page.locator("#gate-outcome").text_content() == "promote"
    checks = page.locator("#gate-checks").inner_text()
    assert "kl_vs_reference" in checks and "reject" in checks and "halt" in checks
    # charts across iterations: one point per iteration on the win-rate chart, and per-step loss curves
    win_rate = page.locator("figure.chart", has_text="judge win rate")
    assert win_rate.locator("circle.dot").count() == 2
    assert page.locator("figure.chart", has_text="train loss").locator("circle.dot").count() >= 1


def test_principles_page_diffs_the_versions_and_counts_per_principle(dashboard, page):
    page.goto(dashboard + "/principles")
    assert "(edited)" in page.locator("main p").first.inner_text()
    assert "- concise" in page.locator("#diff").inner_text()
    stats = page.locator("#principle-stats tr:not(:first-child)")
    assert stats.count() > 1
    sampled = [int(stats.nth(i).locator("td").nth(2).inner_text()) for i in range(stats.count())]
    assert sum(sampled) > 0
    shot(page, "principles")


def test_filters_narrow_the_samples(dashboard, dashboard_run, page):
    page.goto(dashboard + "/samples")
    total = int(page.locator("#sample-count").inner_text().split()[0])
    page.select_option("select[name=iteration]", "2")
    submit(page, page.locator("#filters button"))
    rows = page.locator("#samples tr:not(:first-child)")
    second = rows.count()
    assert 0 < second < total
    assert all(rows.nth(i).locator("td").nth(1).inner_text() == "2" for i in range(second))
    page.select_option("select[name=iteration]", "")
    page.select_option("select[name=category]", "harmful")
    submit(page, page.locator("#filters button"))
    categories = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())]
    assert categories and set(categories) == {"harmful"} and len(categories) < total
    principle = page.locator("select[name=principle] option").nth(1).get_attribute("value")
    page.goto(dashboard + f"/samples?principle={principle}")
    assert all(principle in rows.nth(i).locator("td").nth(3).inner_text() for i in range(rows.count()))
    page.goto(dashboard + "/samples?verdict=revision&iteration=1")
    verdicts = {rows.nth(i).locator("td").nth(4).inner_text() for i in range(rows.count())}
    assert verdicts <= {"revision"} and str(dashboard_run["sample"]) in page.locator("#samples").inner_text()
    shot(page, "samples-filtered")


def test_payloads_show_as_text_and_no_script_runs(dashboard, dashboard_run, page):
    response = page.goto(dashboard + f"/samples/{dashboard_run['sample']}")
    assert response.status == 200
    assert page.locator("#prompt").inner_text() == SCRIPT_PAYLOAD
    assert page.locator("#response").inner_text() == IMG_PAYLOAD
    assert page.locator("main script").count() == 0 and page.locator("main img").count() == 0
    page.goto(dashboard + "/review?show=all")
    assert SCRIPT_PAYLOAD in page.locator(f"#pair-{dashboard_run['pair']}").inner_text()
    page.goto(dashboard + "/samples?iteration=1")
    assert page.evaluate("window.__xss") is None
    assert page.watch.dialogs == [] and page.watch.errors == []
    shot(page, "payload-sample")


def test_a_review_persists_and_shows_in_the_sample_browser(dashboard, dashboard_run, page):
    pair = dashboard_run["pair"]
    log_in(page, dashboard, "reviewer-ann")
    page.goto(dashboard + "/review")
    card = page.locator(f"#pair-{pair}")
    card.locator("input[name=note]").fill("the refusal was the right answer")
    submit(page, card.locator("button[value=flip]"))
    assert page.url == dashboard + "/review"
    assert page.locator(f"#pair-{pair}").count() == 0  # no longer pending
    page.goto(dashboard + f"/samples/{dashboard_run['sample']}")
    status = page.locator("#review-status").inner_text()
    assert status.startswith("flip by reviewer-ann") and "the refusal was the right answer" in status
    page.goto(dashboard + "/samples?iteration=1&flag=reviewed")
    assert str(dashboard_run["sample"]) in page.locator("#samples").inner_text()
    shot(page, "reviewed-sample")
    review = read(dashboard_run["run_dir"], lambda s: latest_reviews(s)[pair])
    note = "the refusal was the right answer"
    assert (review.verdict, review.reviewer, review.note) == ("flip", "reviewer-ann", note)


def test_controls_need_the_token_and_take_effect_with_it(dashboard, dashboard_run, page):
    run_dir = dashboard_run["run_dir"]
    for action in ("pause", "resume", "promote", "rollback"):
        assert httpx.post(f"{dashboard}/api/control/{action}", json={}).status_code == 401
        assert httpx.post(f"{dashboard}/api/control/{action}", json={},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{dashboard}/controls/{action}", data={"note": "x"}).status_code == 401
    assert httpx.post(f"{dashboard}/api/reviews/{dashboard_run['pair']}", json={"verdict": "keep"}).status_code == 401
    assert read(run_dir, lambda s: s.scalar(select(Run.current_policy))) == 2

    bearer = {"Authorization": f"Bearer {TOKEN}", "X-CAI-Operator": "api-ops"}
    rolled = httpx.post(f"{dashboard}/api/control/rollback", json={"note": "api rollback"}, headers=bearer)
    assert rolled.status_code == 200, rolled.text
    assert read(run_dir, lambda s: s.scalar(select(Run.current_policy))) == 1
    refused = httpx.post(f"{dashboard}/api/control/promote", json={"to": 99}, headers=bearer)
    assert refused.status_code == 400 and "v99" in refused.json()["detail"]
    assert read(run_dir, lambda s: s.scalar(select(Run.current_policy))) == 1

    log_in(page, dashboard, "ops-bob")
    page.locator("#control-pause input[name=note]").fill("maintenance")
    submit(page, page.locator("#control-pause button"))
    assert page.locator("#run-state").inner_text() == "paused"
    page.select_option("#control-promote select[name=to]", "v2")
    submit(page, page.locator("#control-promote button"))
    assert page.locator("#current-policy").inner_text() == "v2"
    requests = page.locator("#requests").inner_text()
    assert "ops-bob" in requests and "maintenance" in requests and "api-ops" in requests
    shot(page, "controls-after")
    submit(page, page.locator("#control-resume button"))
    assert page.locator("#run-state").inner_text() == "running"
    assert read(run_dir, lambda s: s.scalar(select(Run.current_policy))) == 2

    # a form posted with the session cookie but without the page's CSRF token is refused
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(f"{dashboard}/controls/pause", data={"note": "forged"}, cookies=cookies)
    assert forged.status_code == 403
    assert page.locator("#run-state").inner_text() == "running"


def test_without_a_token_the_dashboard_is_read_only(dashboard_run, page):
    run_dir = dashboard_run["run_dir"]
    before = database_digest(run_dir / "cai.db")
    process, url = start_dashboard(run_dir, None)
    try:
        for path, _ in PAGES.values():
            assert page.goto(url + path).status == 200
        page.goto(url + "/controls")
        assert "read-only" in page.locator("main").inner_text()
        assert page.locator("main form").count() == 0
        assert httpx.post(f"{url}/api/control/pause", json={},
                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
        pair = read(dashboard_run["run_dir"], lambda s: s.scalar(select(Pair.id).limit(1)))
        assert httpx.post(f"{url}/api/reviews/{pair}", json={"verdict": "drop"}).status_code == 403
        shot(page, "read-only-controls")
    finally:
        stop(process)
    assert database_digest(run_dir / "cai.db") == before  # reading wrote nothing
