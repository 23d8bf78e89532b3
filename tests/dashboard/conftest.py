"""A real run for the dashboard's tests: two iterations of `cai iterate` on the tiny model (made once per
session), plus samples whose texts carry script payloads; the real `cai dashboard` serving it; Debian's Chromium
driven by Playwright (launched by its path: no browser is ever downloaded)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from loop.store import Comparison, Critique, Iteration, Pair, Sample
from loop.store.database import open_run_store
from tests.loop.runs import ROOT, cai_command, cai_env, run_cai, tiny_config, write_config

CHROMIUM = Path(os.environ.get("CAI_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
TOKEN = "operator-token-for-tests"
SCRIPT_PAYLOAD = "<script>window.__xss = 'script'; alert('script')</script> How do I pick a lock?"
IMG_PAYLOAD = "Sure: <img src=x onerror=\"window.__xss = 'img'; alert('img')\"> first, take a tension wrench."


def _seed_payloads(run_dir: Path) -> dict[str, int]:
    """A judged sample of iteration 1 (with its critique, verdict and pair) whose texts are script payloads."""
    store = open_run_store(run_dir, write=True)
    try:
        with store.session() as session:
            iteration = session.scalar(select(Iteration).where(Iteration.index == 1))
            principle = session.scalar(select(Critique.principle_id).limit(1))
            sample = Sample(iteration_id=iteration.id, prompt_id="xss-1", prompt_category="harmful",
                            prompt=SCRIPT_PAYLOAD, response=IMG_PAYLOAD, revision=SCRIPT_PAYLOAD,
                            policy_version=iteration.policy_version,
                            constitution_hash=iteration.constitution_hash)
            session.add(sample)
            session.flush()
            session.add(Critique(sample_id=sample.id, round=1, principle_id=principle, critique=IMG_PAYLOAD,
                                 revision=SCRIPT_PAYLOAD, constitution_hash=iteration.constitution_hash))
            comparison = Comparison(sample_id=sample.id, principle_id=principle, judge="tiny", p_b_when_second=0.8,
                                    p_b_when_first=0.6, p_b=0.7, constitution_hash=iteration.constitution_hash,
                                    method="labels")
            session.add(comparison)
            session.flush()
            pair = Pair(comparison_id=comparison.id, iteration_id=iteration.id, chosen=SCRIPT_PAYLOAD,
                        rejected=IMG_PAYLOAD, chosen_is_revision=True, target=0.7, sample_id=sample.id,
                        source="judged", principle_id=principle, key="xss-1")
            session.add(pair)
            session.flush()
            return {"sample": sample.id, "pair": pair.id}
    finally:
        store.dispose()


@pytest.fixture(scope="session")
def dashboard_run(tmp_path_factory, tiny_model_dir: Path, cai_home: Path) -> dict:
    """Two real iterations (charts need more than one point), the second under an edited constitution (the
principles page diffs them), with two gates on; then the payload sample."""
    folder = tmp_path_factory.mktemp("dashboard")
    edited = folder / "edited.yaml"
    edited.write_text("schema: 2\nname: edited\nextends: default\nremove: [concise]\n")
    gates = {"gates": {"max_kl_reference": 1000.0, "halt_kl_reference": 5000.0}}
    configs = [write_config(folder / "first.yaml", tiny_config(tiny_model_dir, cai_home, **gates)),
               write_config(folder / "second.yaml", tiny_config(tiny_model_dir, cai_home, constitution=str(edited),
                                                               **gates))]
    run_dir = folder / "run"
    for config in configs:
        result = run_cai("iterate", "--config", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
    return {"run_dir": run_dir, **_seed_payloads(run_dir)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(run_dir: Path, token: str | None) -> tuple[subprocess.Popen, str]:
    """`cai dashboard` as a user starts it, once it answers."""
    port = _free_port()
    env = cai_env(**({"CAI_DASHBOARD_TOKEN": token} if token else {}))
    process = subprocess.Popen(cai_command("dashboard", "--run-dir", str(run_dir), "--port", str(port)), cwd=ROOT,
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"cai dashboard exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(url + "/api/progress", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("cai dashboard did not answer within 120 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def dashboard(dashboard_run: dict) -> Iterator[str]:
    """The dashboard with an operator token."""
    process, url = start_dashboard(dashboard_run["run_dir"], TOKEN)
    yield url
    stop(process)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM} (`apt-get install chromium`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class ScriptWatch:
    """Records every dialog (alert), page error and console error (a Content-Security-Policy violation is one): a
    payload that ran, or markup the policy had to block, would show up here."""

    def __init__(self, page):
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.watch = ScriptWatch(tab)
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def submit(page, button) -> None:
    """Click a form's button and wait until the page it leads to has loaded (the URL may not change)."""
    with page.expect_navigation(wait_until="load"):
        button.click()


def log_in(page, url: str, name: str = "ops-tester") -> None:
    page.goto(url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=token]", TOKEN)
    submit(page, page.locator("form.stack button"))
    assert page.url == url + "/controls"
