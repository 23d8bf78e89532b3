"""Supervised fine-tuning on (prompt, response) examples: the supervised stage of Constitutional AI, where the
policy learns its own revisions. Loss is the mean NLL over completion tokens only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from policies.serving import Conversation
from policies.training.batching import plan_batches
from policies.training.data import collate_sequences, encode_completions, sequence_logps
from policies.training.optimization import TrainingLoop
from policies.training.settings import SFTSettings
from policies.training.trainer import BuildContext, OnStep, TrainResult, register_trainer


@dataclass(frozen=True)
class SFTExample:
    prompt: Conversation
    response: str


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood over the completion tokens of a collated batch, and their count."""
    sums, counts = sequence_logps(model, batch)
    count = int(counts.sum().item())
    return -sums.sum() / max(count, 1), count


class SFTTrainer:
    heads: tuple[torch.nn.Module, ...] = ()

    def __init__(self, model, tokenizer, settings: SFTSettings, **loop_options):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.loop = TrainingLoop(model, settings, **loop_options)

    def encode(self, examples: Sequence[SFTExample]) -> list[tuple[list[int], list[int]]]:
        encoded = []
        for e in examples:
            prompt, (completion,) = encode_completions(self.tokenizer, e.prompt, [e.response], self.settings.max_length)
            encoded.append((prompt, completion[:self.settings.max_completion_length]))
        return encoded

    def fit(self, data: Sequence[SFTExample], on_step: OnStep = None) -> TrainResult:
        examples = data
        if not examples:
            raise ValueError("SFT needs at least one example")
        s = self.settings
        data = self.encode(examples)
        lengths = [len(p) + len(c) for p, c in data]

        def batch_of(indices: list[int]):
            return collate_sequences([data[i][0] for i in indices], [data[i][1] for i in indices],
                                     self.tokenizer.pad_token_id)

        def loss_fn(indices: list[int]):
            loss, _ = token_nll(self.model, batch_of(indices))
            return loss, {}, sum(lengths[i] for i in indices)

        def mean_loss() -> float:
            self.model.eval()
            total, tokens = 0.0, 0
            with torch.no_grad():
                for start in range(0, len(data), s.batch_size):
                    loss, count = token_nll(self.model, batch_of(list(range(start, min(start + s.batch_size,
                                                                                        len(data))))))
                    total += loss.item() * count
                    tokens += count
            return total / max(tokens, 1)

        before = mean_loss()
        steps = self.loop.run(
            lambda epoch: plan_batches(lengths, s.batch_size, seed=s.seed, epoch=epoch, bucketing=s.length_bucketing),
            loss_fn, on_step)
        return TrainResult({"sft_loss_before": before, "sft_loss_after": mean_loss(),
                            "sft_optimizer_steps": float(len(steps))}, steps)


def parse_sft_example(record: Mapping[str, Any]) -> SFTExample:
    return SFTExample(record["prompt"], record["response"])


@register_trainer("sft", parse=parse_sft_example)
def build_sft_trainer(ctx: BuildContext) -> SFTTrainer:
    return SFTTrainer(ctx.lm, ctx.tokenizer, ctx.settings, **ctx.loop_options)
