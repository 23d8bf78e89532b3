"""`cai principles try`: one principle on one prompt, every step shown, so an author sees an edit's effect.

The steps are those of an iteration (critique → revision under the principle, then the judge on the pair, in
both orders), on the generators an iteration would use, built by the same `Engines`. The principle's checks run
on the response and on the revision, as the rule-based rewards would grade them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from constitution import Principle
from constitution.checks import CheckResult, run_checks
from critique.judge import Matchup, Verdict, judge
from critique.pairs import choose
from critique.prompts import critique_conversation, revision_conversation
from loop.config import PromptSettings, RunConfig, load_run_config, resolve_paths
from policies.serving import Generator, SamplingParams
from rewards.refusal import REFUSAL_DETECTORS

Echo = Callable[[str], None]
REFUSAL_DETECTOR = "outcome"
"""Grades `refuses` checks here: a refusal that goes on to comply is compliance."""
MARKS = {True: "PASS", False: "FAIL", None: "—"}


@dataclass(frozen=True)
class TryResult:
    response: str
    critique: str
    revision: str
    verdict: Verdict
    seconds: float
    response_checks: list[CheckResult]
    revision_checks: list[CheckResult]


def config_for_try(path: Path | None) -> RunConfig:
    """The run config to try with; without a file, the defaults (SmolLM2 on transformers) and environment."""
    if path is not None:
        return load_run_config(path)
    # Trying a principle reads no prompt files, but a run config must name some.
    return resolve_paths(RunConfig(prompts=PromptSettings(files=[Path("unused.jsonl")])), Path.cwd())


def engines_for(config: RunConfig) -> tuple[Generator, Generator]:
    """The base policy and the judge, exactly as an iteration builds them (weights loaded once, shared)."""
    from loop.pipeline.context import Engines
    from policies.runtime import configure_threads, quiet_model_libraries

    configure_threads(config.threads)
    quiet_model_libraries()
    engines = Engines(config, policy_version=0, adapter=None)
    return engines.policy, engines.judge


def check_answer(principle: Principle, which: str, answer: str, echo: Echo) -> list[CheckResult]:
    """Run the principle's checks on one answer and print each result; nothing when it declares none."""
    if principle.checks is None:
        return []
    results = run_checks(principle.checks, answer, REFUSAL_DETECTORS[REFUSAL_DETECTOR](answer))
    graded = f" (refuses graded by the {REFUSAL_DETECTOR} refusal detector)" if principle.checks.refuses is not None \
        else ""
    width = max((len(r.name) for r in results), default=0)
    echo(f"\n── checks on the {which}{graded}\n"
         + ("\n".join(f"{r.name:<{width}}  {MARKS[r.passed]:<4}  {r.detail}" for r in results) or "none set"))
    return results


def try_principle(principle: Principle, prompt: str, policy: Generator, judge_model: Generator, config: RunConfig,
                  echo: Echo, *, response: str | None = None) -> TryResult:
    started = time.perf_counter()
    c = config.critique
    params = SamplingParams(c.max_new_tokens, c.temperature, c.top_p, seed=config.seed)

    def step(title: str, run: Callable[[], str]) -> str:
        t = time.perf_counter()
        text = run()
        echo(f"\n── {title} ({time.perf_counter() - t:.1f} s)\n{text}")
        return text

    echo(f"principle {principle.id}: {principle.title or principle.description or ''}".rstrip(": "))
    for name in ("positive_system_prompt", "negative_system_prompt"):
        if getattr(principle, name) is not None:
            echo(f"{name.replace('_', ' ')}: {principle.render(name, prompt=prompt)}")
    for name in ("positive_prefix", "negative_prefix"):
        if getattr(principle, name) is not None:
            echo(f"{name.replace('_', ' ')}: {getattr(principle, name)}")
    echo(f"\n── prompt\n{prompt}")
    if response is None:
        g = config.generation
        gen_params = SamplingParams(g.max_new_tokens, g.temperature, g.top_p, seed=config.seed)
        response = step(f"response by {policy.name}",
                        lambda: policy.generate([[{"role": "user", "content": prompt}]], gen_params)[0])
    else:
        echo(f"\n── response (given)\n{response}")
    response_checks = check_answer(principle, "response", response, echo)
    echo(f"\n── critique request\n{principle.render('critique_request', prompt=prompt, response=response, round=0)}")
    critique = step("critique", lambda: policy.generate([critique_conversation(prompt, response, principle)],
                                                        params)[0])
    request = principle.render("revision_request", prompt=prompt, response=response, critique=critique, round=0)
    echo(f"\n── revision request\n{request}")
    revision = step("revision", lambda: policy.generate(
        [revision_conversation(prompt, response, critique, principle)], params)[0])
    revision_checks = check_answer(principle, "revision", revision, echo)
    echo(f"\n── judge question\n{principle.render('comparison_question', prompt=prompt)}")
    t = time.perf_counter()
    verdict = judge(judge_model, [Matchup(prompt, response, revision, principle)])[0]
    pair = choose(verdict.p_b, config.judge.margin)
    outcome = ("dropped: too close to call" if pair is None
               else f"kept: chosen = {'revision' if pair.chosen_is_b else 'response'}, target {pair.target:.3f}")
    echo(f"\n── judge verdict by {judge_model.name} ({time.perf_counter() - t:.1f} s)\n"
         f"p(revision better) = {verdict.p_b:.3f} (revision second {verdict.p_b_when_second:.3f}, "
         f"first {verdict.p_b_when_first:.3f}); margin {config.judge.margin}: pair {outcome}")
    seconds = time.perf_counter() - started
    echo(f"\ntotal {seconds:.1f} s")
    return TryResult(response, critique, revision, verdict, seconds, response_checks, revision_checks)
