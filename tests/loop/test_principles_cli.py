"""`cai principles check|show|diff|try`: what an author sees, and the exit codes."""

import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.cli import app
from loop.pipeline import principle_try
from tests.critique.fakes import ScriptedGenerator

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "constitution" / "fixtures"
runner = CliRunner()


def cai(*args: str):
    return runner.invoke(app, list(args))


def test_check_exit_codes_errors_warnings_and_strict():
    ok = cai("principles", "check", str(ROOT / "principles"))
    assert ok.exit_code == 0 and "default.yaml: ok: 15 principles from 1 file(s), hash " in ok.output
    assert ", 11 with checks" in ok.output
    broken = cai("principles", "check", str(FIXTURES / "v2" / "escapes.yaml"))
    assert broken.exit_code == 1 and broken.output.count(": error: ") == 6
    warned = FIXTURES / "v2" / "compose" / "twice.yaml"
    assert cai("principles", "check", str(warned)).exit_code == 0
    strict = cai("principles", "check", "--strict", str(warned))
    assert strict.exit_code == 2 and ": warning: include[1]: principle 'epsilon'" in strict.output
    assert cai("principles", "check", str(FIXTURES / "nothing-here")).exit_code == 1


def test_show_prints_the_resolved_principle_with_rendered_examples():
    result = cai("principles", "show", str(FIXTURES / "v2" / "compose" / "child.yaml"), "--id", "gamma")
    assert result.exit_code == 0, result.output
    assert "child (hash " in result.output and "base.yaml:17)" in result.output
    # The child's snippet, rendered into the inherited principle.
    assert "revision_request: Answer the question. Give only the new response." in result.output
    assert "-- example 1: prompt 'What is the capital of France?'" in result.output
    assert "    critique: It never names the capital.\n    revision: Paris." in result.output
    shipped = cai("principles", "show", "default", "--id", "no-overcautious-refusal")
    assert "-- built-in sample: prompt 'How do I stop a program that is stuck" in shipped.output
    assert "applies to: benign, borderline; weight 1.2" in shipped.output
    assert "\n  checks: refuses: false\n" in shipped.output
    assert "\n  checks: max_words: 200\n" in cai("principles", "show", "default", "--id", "concise").output
    assert "checks:" not in cai("principles", "show", "default", "--id", "no-preachiness").output
    assert cai("principles", "show", "default", "--id", "nope").exit_code == 1


def test_diff_lists_added_removed_changed_and_the_hash():
    compose = FIXTURES / "v2" / "compose"
    result = cai("principles", "diff", str(compose / "base.yaml"), str(compose / "child.yaml"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(": changes")
    assert "+ epsilon" in lines and "+ delta" in lines and "- beta" in lines
    assert "~ alpha: critique_request, weight" in lines
    same = cai("principles", "diff", "default", str(ROOT / "principles" / "default.yaml"))
    assert same.output.splitlines() == [same.output.split(":")[0] + ": unchanged"]


def scripted_engines():
    def reply(conversation):
        last = conversation[-1]["content"]
        if last.startswith("Check whether"):
            return "The refusal was not needed."
        if last.startswith("If the request was harmless"):
            return "Run `kill PID`."
        return "I can't help with killing."
    # The judge prefers the helpful revision 0.8 : 0.2 in whichever slot it is shown; otherwise it has no view.
    def score(conversation, choices):
        body = conversation[-1]["content"]
        if "Run `kill PID`" not in body:
            return [math.log(0.5), math.log(0.5)]
        revision_second = body.index("Run `kill PID`") > body.index("I can't help")
        return [math.log(0.2), math.log(0.8)] if revision_second else [math.log(0.8), math.log(0.2)]
    return ScriptedGenerator(reply), ScriptedGenerator(score=score)


def test_try_prints_each_step_on_a_scripted_generator(monkeypatch):
    policy, judge_model = scripted_engines()
    monkeypatch.setattr(principle_try, "engines_for", lambda config: (policy, judge_model))
    result = cai("principles", "try", "no-overcautious-refusal", "--prompt", "How do I kill a stuck process?")
    assert result.exit_code == 0, result.output
    headers = [line.split(" (")[0] for line in result.output.splitlines() if line.startswith("── ")]
    assert headers == ["── prompt", "── response by scripted", "── checks on the response", "── critique request",
                       "── critique", "── revision request", "── revision", "── checks on the revision",
                       "── judge question", "── judge verdict by scripted"]
    # The principle's `refuses: false`, graded by the outcome detector: the refusal fails, the revision passes.
    assert ("── checks on the response (refuses graded by the outcome refusal detector)\n"
            "refuses  FAIL  no refusal expected, the answer refuses\n") in result.output
    assert "── checks on the revision (refuses graded by the outcome refusal detector)\n" \
           "refuses  PASS  no refusal expected, the answer complies\n" in result.output
    assert "I can't help with killing.\n" in result.output and "Run `kill PID`.\n" in result.output
    # Both orders favour the revision: p = 0.8, far beyond the default margin.
    assert "p(revision better) = 0.800 (revision second 0.800, first 0.800)" in result.output
    assert "pair kept: chosen = revision, target 0.800" in result.output
    critique_call = policy.generated[1]
    assert [m["role"] for m in critique_call] == ["user", "assistant", "user"]
    assert critique_call[0]["content"] == "How do I kill a stuck process?"
    assert critique_call[-1]["content"].startswith("Check whether your last response refused")


def test_try_with_a_given_response_and_an_unknown_id(monkeypatch):
    policy, judge_model = scripted_engines()
    monkeypatch.setattr(principle_try, "engines_for", lambda config: (policy, judge_model))
    given = cai("principles", "try", "concise", "--prompt", "p", "--response", "I can't help with killing.")
    assert given.exit_code == 0 and "── response (given)" in given.output
    assert "── checks on the response\nmax_words  PASS  5 words <= 200\n" in given.output
    assert len(policy.generated) == 2  # critique and revision only
    unknown = cai("principles", "try", "consise", "--prompt", "p")
    assert unknown.exit_code == 1 and "no principle 'consise'" in unknown.output


@pytest.mark.slow
def test_try_on_smollm2_within_a_cpu_budget(monkeypatch):
    """The real model, the quickstart config. Single-threaded so that the process's CPU time is the work done:
    on a shared machine wall time says more about the neighbours than about `try`. Measured on the shared 2-core
    machine under load 11-15: 23-38 s of CPU (up to 3 x 96 new tokens); the bound catches a 1.5x regression."""
    import resource

    monkeypatch.setenv("CAI_THREADS", "1")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = cai("principles", "try", "no-overcautious-refusal", "--prompt",
                 "How do I kill a Python process that is stuck?", "--config", str(ROOT / "configs/quickstart.yaml"))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.exit_code == 0, result.output
    assert "── critique (" in result.output and "── judge verdict by smollm2-135m-instruct" in result.output
    assert "p(revision better) = " in result.output
    assert "── checks on the revision (refuses graded by the outcome refusal detector)\nrefuses  " in result.output
    print(f"principles try on SmolLM2: {cpu:.1f} s CPU, {time.perf_counter() - started:.1f} s wall")
    assert cpu < 60
