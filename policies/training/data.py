"""Tokenised preference pairs and the log-probabilities of their completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

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


def encode_prompt(tokenizer, prompt: Conversation) -> list[int]:
    """The chat-templated prompt, ending where the assistant's reply begins."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(head, add_special_tokens=False)["input_ids"]


def encode_completions(tokenizer, prompt: Conversation, responses: Sequence[str],
                       max_length: int) -> tuple[list[int], list[list[int]]]:
    """Prompt and completions tokenised separately (no merges across the boundary), cut to `max_length`.

    Completions keep at least half the budget; the prompt loses its oldest tokens first.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    budget = max(max_length - len(prompt_ids), max_length // 2)
    completions = [tokenizer(completion_text(tokenizer, prompt, text), add_special_tokens=False)["input_ids"][:budget]
                   for text in responses]
    keep = max_length - max(len(c) for c in completions)
    return prompt_ids[-keep:], completions


def encode_pair(tokenizer, example: PreferenceExample, max_length: int) -> EncodedPair:
    prompt, (chosen, rejected) = encode_completions(tokenizer, example.prompt, [example.chosen, example.rejected],
                                                    max_length)
    return EncodedPair(prompt, chosen, rejected)


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen sequences then rejected ones, right-padded, so one forward pass scores both halves."""
    return collate_sequences([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                             pad_id)


def collate_sequences(prompts: Sequence[list[int]], completions: Sequence[list[int]],
                      pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows with a mask marking the completion tokens."""
    sequences = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for row, (seq, prompt) in enumerate(zip(sequences, prompts, strict=True)):
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        completion[row, len(prompt): len(seq)] = 1
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


LOGIT_CHUNK = 1024
"""Completion tokens whose logits exist at once: bounds the (tokens, vocabulary) tensor that dominates memory."""


def _chunk_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.gather(logits, 1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)


def completion_states(model, batch: dict[str, torch.Tensor]):
    """(the causal LM inside any adapter wrapper, final hidden states (N, H) at the N positions that predict a
    completion token, those tokens (N,), the row of each (N,)) for a collated batch."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).last_hidden_state
    # Position t predicts token t + 1: keep the positions whose next token is part of the completion.
    predicts = batch["completion_mask"][:, 1:].to(device).bool()
    rows, positions = predicts.nonzero(as_tuple=True)
    return causal_lm, hidden[:, :-1][rows, positions], ids[:, 1:][rows, positions], rows


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a collated batch: (summed completion log-prob, completion token count), each (rows,).

    The vocabulary projection runs only on the positions that predict completion tokens (not the prompt,
    not padding), in chunks that are recomputed in the backward pass instead of stored: the full
    (rows, length, vocabulary) logits are never held, which is most of the memory of preference training.
    """
    causal_lm, selected, targets, rows = completion_states(model, batch)
    head = causal_lm.get_output_embeddings()
    pieces = []
    for start in range(0, targets.shape[0], LOGIT_CHUNK):
        chunk = (head, selected[start:start + LOGIT_CHUNK], targets[start:start + LOGIT_CHUNK])
        if torch.is_grad_enabled():
            pieces.append(torch.utils.checkpoint.checkpoint(_chunk_logps, *chunk, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(*chunk))
    token_logps = torch.cat(pieces) if pieces else selected.new_zeros(0)
    n_rows = batch["input_ids"].shape[0]
    sums = torch.zeros(n_rows, device=selected.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return sums, batch["completion_mask"][:, 1:].to(selected.device).sum(-1)


def completion_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of a collated batch split into (chosen (B,), rejected (B,))."""
    sums, _ = sequence_logps(model, batch)
    half = sums.shape[0] // 2
    return sums[:half], sums[half:]
