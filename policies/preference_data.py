"""Tokenised preference pairs and the log-probabilities of their completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from policies.serving import Conversation


@dataclass(frozen=True)
class PreferenceExample:
    prompt: Conversation
    chosen: str
    rejected: str
    target: float = 1.0
    """Soft label: probability that `chosen` is better."""


@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def tokens(self) -> int:
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


def completion_text(tokenizer, prompt: Conversation, response: str) -> str:
    """The templated assistant turn, end-of-turn marker included, that follows the rendered prompt."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError("the chat template does not render a reply as a suffix of its prompt")
    return full[len(head):]


def encode_pair(tokenizer, example: PreferenceExample, max_length: int) -> EncodedPair:
    """Prompt and completions tokenised separately (no merges across the boundary), cut to `max_length`.

    Completions keep at least half the budget; the prompt loses its oldest tokens first.
    """
    head = tokenizer.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(head, add_special_tokens=False)["input_ids"]
    chosen, rejected = (
        tokenizer(completion_text(tokenizer, example.prompt, text), add_special_tokens=False)["input_ids"]
        for text in (example.chosen, example.rejected)
    )
    budget = max(max_length - len(prompt), max_length // 2)
    chosen, rejected = chosen[:budget], rejected[:budget]
    keep = max_length - max(len(chosen), len(rejected))
    return EncodedPair(prompt[-keep:], chosen, rejected)


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen sequences then rejected ones, right-padded, so one forward pass scores both halves."""
    sequences = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for row, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        completion[row, start: len(seq)] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def completion_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each completion: (chosen (B,), rejected (B,)) for a collated batch."""
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    targets = ids[:, 1:]
    token_logps = torch.gather(logits.float(), 2, targets.unsqueeze(-1)).squeeze(-1)
    token_logps = token_logps - torch.logsumexp(logits.float(), dim=-1)
    mask = batch["completion_mask"][:, 1:].to(device)
    sums = (token_logps * mask).sum(-1)
    half = sums.shape[0] // 2
    return sums[:half], sums[half:]
