"""`cai generate`: a prompt file answered by any policy of a run (or the base model), on either backend, best of n.

The generators are the ones an iteration uses, built by the same `Engines` (so a policy answers here exactly as in
its run: its adapter on the base in-process, or published on the vLLM server). With `best_of` n each prompt is
sampled n times in one call (`num_return_sequences` in-process, one request with `n` on the server), every sample
is scored by a reward kind of `loop.rewards` (the constitution's checks, the run's reward model or the judge), and
the highest-scoring sample is kept with the scores and texts of the ones it beat.

It lives in `pipeline` because `Engines` and the vLLM backend do; it reads the run and writes only `out`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitution import Constitution, PrincipleSampler, load_constitution
from loop.config import RunConfig, load_run_config
from loop.config.run import Backend
from loop.operate.export_policy import policy_adapter
from loop.pipeline.principle_try import config_for_try
from loop.progress import NullReporter, Reporter
from loop.prompts import PromptRecord, load_prompts
from loop.rewards import reward_scorer
from loop.store.database import open_run_store
from policies.files import atomic_write_text
from policies.serving import SamplingParams
from rewards.base import RewardContext, RewardScorer, Scored
from rewards.settings import RewardComponentSettings, RewardSettings

SCORERS = {"checks": "checks", "reward-model": "reward_model", "judge": "judge"}
"""The `--scorer` names and the reward kinds they build (`rewards.REWARD_KINDS`)."""


class GenerateRefused(ValueError):
    """The command cannot run as asked: the message names what is missing and what to do."""


def best_of(scores: Sequence[float | None]) -> int:
    """The index of the sample to keep: the highest score, the first of equal ones; a sample that could not be
    scored (None) never wins over one that was; when none was scored, the first."""
    if not scores:
        raise ValueError("best_of needs at least one sample")
    chosen = 0
    for index, value in enumerate(scores):
        if value is not None and (scores[chosen] is None or value > scores[chosen]):
            chosen = index
    return chosen


@dataclass(frozen=True)
class Source:
    """Whose answers: the run's config (or the defaults), the policy version and its adapter."""

    config: RunConfig
    version: int
    adapter: Path | None = None
    run_name: str = ""
    run_dir: Path | None = None


@dataclass(frozen=True)
class Options:
    best_of: int = 1
    scorer: str | None = None
    """A key of SCORERS, or None: the answers are not scored (then `best_of` must be 1)."""
    max_new_tokens: int | None = None
    """Default: the run's `generation.max_new_tokens`; likewise temperature, top_p and seed below."""
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    limit: int | None = None
    """Only the first `limit` prompts of the file."""


def resolve_source(run_dir: Path | None, policy_text: str, *, backend: str | None = None,
                   server_url: str | None = None, model: str | None = None) -> Source:
    """The policy `policy_text` (current, base, N or vN) of the run in `run_dir`; without a run only `base`, the
    model `model` (default: the built-in default) with the default settings."""
    if run_dir is None:
        if policy_text.strip().lower() not in ("base", "v0", "0"):
            raise GenerateRefused(f"--policy {policy_text} needs --run-dir (the run that holds it); only --policy "
                                  "base runs without a run")
        config = config_for_try(None)
        if model is not None:
            config = config.model_copy(update={"model": config.model.model_copy(update={"name": model})})
        return Source(_served(config, backend, server_url), 0)
    if model is not None:
        raise GenerateRefused("--model is for --policy base without --run-dir: a run's policies are adapters of "
                              "the run's own base model")
    store = open_run_store(run_dir, write=False)
    try:
        with store.session() as session:
            run, version, adapter = policy_adapter(session, run_dir, policy_text)
            name, stored = run.name, run.config
    finally:
        store.dispose()
    if version and adapter is None:
        raise GenerateRefused(f"policy v{version} has no adapter recorded in {run_dir}")
    # The resolved config of the run's last start, as `cai eval` reads it; else the one recorded with the run.
    file = run_dir / "config.yaml"
    config = load_run_config(file) if file.is_file() else RunConfig.model_validate(stored)
    return Source(_served(config, backend, server_url), version, adapter, name, run_dir)


def _served(config: RunConfig, backend: str | None, server_url: str | None) -> RunConfig:
    """The config with the command's backend and server, when it names them."""
    g = config.generation
    if backend is not None:
        g = g.model_copy(update={"backend": Backend(backend)})
    if server_url is not None:
        g = g.model_copy(update={"server": g.server.model_copy(update={"url": server_url})})
    return config.model_copy(update={"generation": g})


def read_prompts(path: Path, limit: int | None = None) -> list[PromptRecord]:
    """The file's prompts, the first `limit` of them: cai's record shape in JSONL, CSV, parquet or a `datasets`
    folder (`loop.dataset_files`; a file without ids gets FILE-STEM-ROW)."""
    return load_prompts([path])[:limit]


def trained_reward_model(run_dir: Path | None) -> Path:
    """The adapter directory of the run's latest trained reward model (`training/iteration-N/reward_model`)."""
    from policies.training.heads import HEAD_FILE

    if run_dir is None:
        raise GenerateRefused("--scorer reward-model needs --run-dir of a run that trained a reward model")
    found = sorted((int(p.parents[2].name.removeprefix("iteration-")), p.parent)
                   for p in run_dir.glob(f"training/iteration-*/reward_model/adapter/{HEAD_FILE}")
                   if p.parents[2].name.removeprefix("iteration-").isdigit())
    if not found:
        raise GenerateRefused(f"the run in {run_dir} has no trained reward model (no training/iteration-N/"
                              "reward_model/adapter): train one with train.trainer: ppo, or use --scorer checks "
                              "or judge")
    return found[-1][1]


def _scorer(kind: str, config: RunConfig, constitution: Constitution, engines,
            reward_model: Path | None) -> RewardScorer:
    """The reward of the one kind `kind`, refusals in its checks graded by the run's training detector."""
    context = RewardContext(constitution, judge=engines.judge if kind == "judge" else None,
                            reward_model_dir=reward_model, base_model_dir=engines.model_dir,
                            dtype=config.model.dtype, device=config.model.device)
    settings = RewardSettings(components=[RewardComponentSettings(kind=SCORERS[kind])],  # type: ignore[arg-type]
                              refusal_classifier=config.rewards.refusal_classifier)
    return reward_scorer(settings, context)


def check_options(options: Options) -> None:
    """Refuse what cannot work before any model loads."""
    if options.best_of < 1:
        raise GenerateRefused(f"--best-of {options.best_of}: at least 1")
    if options.scorer is not None and options.scorer not in SCORERS:
        raise GenerateRefused(f"--scorer {options.scorer}: not one of {', '.join(SCORERS)}")
    if options.best_of > 1 and options.scorer is None:
        raise GenerateRefused(f"--best-of {options.best_of} needs --scorer ({', '.join(SCORERS)}) to choose among "
                              "the samples")


def _params(options: Options, config: RunConfig) -> SamplingParams:
    """The command's sampling settings, each one it leaves out from the run's generation settings."""
    g = config.generation

    def given(value, default):
        return default if value is None else value

    return SamplingParams(given(options.max_new_tokens, g.max_new_tokens), given(options.temperature, g.temperature),
                          given(options.top_p, g.top_p), seed=given(options.seed, config.seed))


def _mean(values: Sequence[float | None]) -> float | None:
    scored = [v for v in values if v is not None]
    return statistics.fmean(scored) if scored else None


def _record(prompt: PromptRecord, version: int, texts: list[str], scores: list[float | None],
            principle: str | None) -> dict[str, Any]:
    chosen = best_of(scores)
    record = {"id": prompt.id, "prompt": prompt.prompt, "category": prompt.category, "policy": f"v{version}",
              "answer": texts[chosen], "score": scores[chosen], "sample": chosen, "first_score": scores[0],
              "beaten": [{"sample": i, "score": s, "text": t}
                         for i, (t, s) in enumerate(zip(texts, scores, strict=True)) if i != chosen]}
    return record | ({"principle": principle} if principle is not None else {})


def _score(kind: str, config: RunConfig, constitution: Constitution, engines, reward_model: Path | None,
           prompts: list[PromptRecord], texts: list[str], reporter: Reporter) -> tuple[list, list]:
    """Every sample's combined reward (None: unscorable) and each prompt's principle (drawn for the judge, the
    same for all of a prompt's samples so their scores compare)."""
    n = len(texts) // len(prompts)
    sampler = PrincipleSampler(constitution, seed=config.seed)
    drawn = [sampler.sample("generate", p.id, category=p.category) for p in prompts]
    items = [Scored(p.prompt, texts[i * n + k], p.category, drawn[i], p.task)
             for i, p in enumerate(prompts) for k in range(n)]
    scorer = _scorer(kind, config, constitution, engines, reward_model)
    with reporter.task(f"score ({kind})", len(items)) as advance:
        scores = [reward.total for reward in scorer.score(items, advance)]
    return scores, [p.id if kind == "judge" else None for p in drawn]


def generate_file(source: Source, prompts_path: Path, out: Path, options: Options,
                  reporter: Reporter | None = None) -> dict[str, Any]:
    """Answer the prompts of `prompts_path` with `source`'s policy into the JSONL file `out` (written whole at the
    end); the summary: counts, mean chosen and first-sample scores, time and samples/s."""
    from loop.pipeline.context import Engines
    from policies.runtime import configure_threads, quiet_model_libraries

    check_options(options)
    reporter = reporter or NullReporter()
    config, n, params = source.config, options.best_of, _params(options, source.config)
    if n > 1 and params.temperature <= 0:
        raise GenerateRefused(f"--best-of {n} at temperature 0 samples the same answer {n} times: sample with "
                              "--temperature above 0")
    prompts = read_prompts(prompts_path, options.limit)
    reward_model = trained_reward_model(source.run_dir) if options.scorer == "reward-model" else None
    constitution = load_constitution(config.constitution) if options.scorer else None
    started = time.perf_counter()
    configure_threads(config.threads)
    quiet_model_libraries()
    engines = Engines(config, policy_version=source.version, adapter=source.adapter, run_name=source.run_name)
    generator = engines.policy  # loaded (or published) here, so that samples/s counts generation only
    sampling = time.perf_counter()
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]
    with reporter.task(f"generate (best of {n})", len(prompts) * n) as advance:
        texts = generator.generate(conversations, params, advance, samples=n)
    generate_s = time.perf_counter() - sampling
    scores, principles = [None] * len(texts), [None] * len(prompts)
    if options.scorer is not None:
        scores, principles = _score(options.scorer, config, constitution, engines, reward_model, prompts, texts,
                                    reporter)
    records = [_record(p, source.version, texts[i * n:(i + 1) * n], scores[i * n:(i + 1) * n], principles[i])
               for i, p in enumerate(prompts)]
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    wall = time.perf_counter() - started
    return {"policy": f"v{source.version}", "backend": config.generation.backend.value, "prompts": len(prompts),
            "samples": len(texts), "best_of": n, "scorer": options.scorer,
            "mean_chosen_score": _mean([r["score"] for r in records]),
            "mean_first_score": _mean([r["first_score"] for r in records]),
            "wall_s": wall, "generate_s": generate_s,
            "samples_per_s": len(texts) / generate_s if generate_s > 0 else math.nan, "out": str(out)}
