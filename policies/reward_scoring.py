"""The `reward_model` reward kind: a trained reward model's score of each answer, squashed by a sigmoid into
(0, 1) so that it combines with checks and the judge on one scale. Importing this module registers it in
`rewards.REWARD_KINDS`; torch is loaded only when one is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.serving import Progress
from rewards.base import Component, RewardContext, Scored, missing_model, register_reward_kind
from rewards.settings import RewardComponentSettings, RewardSettings

MAX_LENGTH = 512
"""Tokens per scored sequence: the reward model trainer's default `max_length`."""
BATCH_SIZE = 8


@dataclass(frozen=True)
class RewardModelReward:
    model: Any
    """A `policies.training.reward_model.RewardModel` in eval mode."""
    tokenizer: Any
    batch_size: int = BATCH_SIZE
    kind: str = "reward_model"

    def score(self, items: Sequence[Scored], progress: Progress | None = None) -> list[list[Component]]:
        import torch

        from policies.training.data import collate_sequences, encode_completions

        device = next(self.model.parameters()).device
        values: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                # Encoded as the trainer encodes a pair's side: the prompt as one user turn, then the answer.
                encoded = [encode_completions(self.tokenizer, [{"role": "user", "content": item.prompt}],
                                              [item.response], MAX_LENGTH) for item in chunk]
                batch = collate_sequences([p for p, _ in encoded], [c[0] for _, c in encoded],
                                          self.tokenizer.pad_token_id)
                scores = self.model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                values += torch.sigmoid(scores.float()).tolist()
                if progress:
                    progress(len(chunk))
        return [[Component(self.kind, "score", v)] for v in values]


@register_reward_kind("reward_model")
def build_reward_model_reward(component: RewardComponentSettings, settings: RewardSettings,
                              context: RewardContext) -> RewardModelReward:
    from policies.training.heads import HEAD_FILE

    if context.reward_model_dir is None or context.base_model_dir is None:
        raise missing_model("reward_model", "a trained reward model directory and the base model it was trained on")
    if not (context.reward_model_dir / HEAD_FILE).is_file():
        raise ValueError(f"reward kind 'reward_model': {context.reward_model_dir} has no {HEAD_FILE} "
                         "(not a reward model written by a reward_model training run)")
    from policies.models import load_model
    from policies.training.reward_model import RewardModel

    model, tokenizer = load_model(context.base_model_dir, dtype=context.dtype, device=context.device,
                                  adapter=context.reward_model_dir)
    return RewardModelReward(RewardModel.load(model, context.reward_model_dir).eval(), tokenizer)
