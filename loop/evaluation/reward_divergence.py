"""The reward-hacking signal of a PPO candidate: does its reward model prefer the candidate's answers more often
than the judge does? Also the scoring batches that this and the KL read stored answers through."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from sqlalchemy import select

from loop.config.run import ModelSettings
from loop.store import EvalResponse, Iteration, Policy, Store
from policies.models import load_model, resolve_model_dir
from policies.training.data import collate_sequences, encode_completions
from policies.training.heads import HEAD_FILE
from policies.training.reward_model import RewardModel

SCORING_MAX_LENGTH = 1024


def scoring_batches(tokenizer, rows: Sequence[EvalResponse], size: int) -> Iterator[dict]:
    """Each answer templated after its prompt, as collated batches of `size` rows (prompt + completion mask)."""
    for start in range(0, len(rows), size):
        encoded = [encode_completions(tokenizer, [{"role": "user", "content": r.prompt}], [r.response],
                                      SCORING_MAX_LENGTH) for r in rows[start:start + size]]
        yield collate_sequences([p for p, _ in encoded], [c[0] for _, c in encoded], tokenizer.pad_token_id)


def ppo_reward_model(store: Store, run_id: int, run_dir: Path, candidate: int) -> Path | None:
    """The reward model a PPO candidate was trained against (None for other trainers)."""
    with store.session() as session:
        row = session.execute(select(Policy.trainer, Iteration.index).join(
            Iteration, Policy.iteration_id == Iteration.id).where(
            Policy.run_id == run_id, Policy.version == candidate)).first()
    if row is None or row.trainer != "ppo":
        return None
    directory = run_dir / "training" / f"iteration-{row.index}" / "reward_model" / "adapter"
    return directory if (directory / HEAD_FILE).is_file() else None


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def reward_divergence(model: ModelSettings, home: Path, directory: Path, candidate: Mapping[object, EvalResponse],
                      previous: Mapping[object, EvalResponse], judge_win_rate: float,
                      batch_size: int) -> dict[str, float]:
    """How often the reward model in `directory` prefers the candidate's answer over the previous policy's,
    minus how often the judge does. A policy that learned to please its reward model, not the judge, shows a
    large positive gap."""
    weights, tokenizer = load_model(resolve_model_dir(model.name, home), dtype=model.dtype, device=model.device,
                                    adapter=directory)
    scorer = RewardModel.load(weights, directory).eval()
    device = next(scorer.parameters()).device

    def scores(rows: list[EvalResponse]) -> list[float]:
        result = []
        with torch.inference_mode():
            for batch in scoring_batches(tokenizer, rows, batch_size):
                result += scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist()
        return result

    mine, theirs = scores(list(candidate.values())), scores([previous[k] for k in candidate])
    rm_wins = _mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs, strict=True)])
    return {"reward_mean": _mean(mine), "previous_reward_mean": _mean(theirs),
            "reward_model_win_rate_vs_previous": rm_wins, "reward_judge_divergence": rm_wins - judge_win_rate}
