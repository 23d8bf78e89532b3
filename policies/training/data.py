"""Tokenised preference pairs and the log-probabilities of their completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from policies.serving import Conversation
from policies.serving.control_tokens import neutralise_conversation, specials_of
from policies.training.shared_prefix_attention import NAME as SHARED_PREFIX_ATTENTION
from policies.training.shared_prefix_attention import Segment, SegmentIndex
from policies.training.token_logps import projected_logps


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


def _rendered(tokenizer, conversation: Conversation, **options) -> str:
    # As the generators render it: control-token strings in the contents are neutralised (`control_tokens`),
    # so training scores the tokens the policy was shown, and no text opens or closes a turn.
    return tokenizer.apply_chat_template(neutralise_conversation(conversation, specials_of(tokenizer)),
                                         tokenize=False, **options)


def completion_text(tokenizer, prompt: Conversation, response: str) -> str:
    """The templated assistant turn, end-of-turn marker included, that follows the rendered prompt."""
    head = _rendered(tokenizer, prompt, add_generation_prompt=True)
    full = _rendered(tokenizer, [*prompt, {"role": "assistant", "content": response}])
    if not full.startswith(head):
        raise ValueError("the chat template does not render a reply as a suffix of its prompt")
    return full[len(head):]


def encode_prompt(tokenizer, prompt: Conversation) -> list[int]:
    """The chat-templated prompt, ending where the assistant's reply begins."""
    return tokenizer(_rendered(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


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


def encode_pair(tokenizer, example: PreferenceExample, max_length: int,
                max_completion_length: int | None = None) -> EncodedPair:
    """A pair's prompt and both answers, each answer cut to its first `max_completion_length` tokens if set."""
    prompt, (chosen, rejected) = encode_completions(tokenizer, example.prompt, [example.chosen, example.rejected],
                                                    max_length)
    return EncodedPair(prompt, chosen[:max_completion_length], rejected[:max_completion_length])


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
    token_logps = projected_logps(causal_lm.get_output_embeddings(), selected, targets)
    n_rows = batch["input_ids"].shape[0]
    sums = torch.zeros(n_rows, device=selected.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return sums, batch["completion_mask"][:, 1:].to(selected.device).sum(-1)


def completion_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of a collated batch split into (chosen (B,), rejected (B,))."""
    sums, _ = sequence_logps(model, batch)
    half = sums.shape[0] // 2
    return sums[:half], sums[half:]


@dataclass(frozen=True)
class SharedPrefixBatch:
    """Pairs packed with their prompt computed once: each pair is laid out as prompt | chosen | rejected, the
    rejected completion positioned right after the prompt (as if the chosen one were not there) and masked so
    it sees only the prompt and itself. Pairs are packed into rows without padding between them.

    Tensors: `input_ids`, `position_ids` (rows, width); `attention_mask` (rows, 1, width, width) bool, True
    where a token may attend; `sources` (rows, width) the flat position whose hidden state predicts each
    completion token, `targets` the token, `segment` 2 * pair + side (0 chosen, 1 rejected), all (tokens,);
    `layout` where each pair lies, for `shared_prefix_attention`, which computes the same as the mask.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor
    segment: torch.Tensor
    pairs: int
    layout: tuple[Segment, ...]

    @property
    def tokens(self) -> int:
        """Tokens computed: each prompt once, each completion once, no padding inside a row."""
        return int(self.attention_mask.diagonal(dim1=-2, dim2=-1).sum().item())


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit-decreasing packing of items into rows of at most `budget` tokens (an item longer than the
    budget gets a row of its own). Deterministic: ties keep the input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(budget - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def shared_prefix_length(pair: EncodedPair) -> int:
    return len(pair.prompt) + len(pair.chosen) + len(pair.rejected)


def pack_shared_prefix(pairs: Sequence[EncodedPair], pad_id: int, row_budget: int) -> SharedPrefixBatch:
    """Pack `pairs` (see `SharedPrefixBatch`) into rows of at most `row_budget` tokens."""
    rows = pack_rows([shared_prefix_length(p) for p in pairs], row_budget)
    width = max(sum(shared_prefix_length(pairs[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    owner = torch.full_like(ids, -1)  # pair index per token; -1 for padding at a row's end
    side = torch.zeros_like(ids)  # 0 prompt, 1 chosen, 2 rejected
    sources, targets, segment, layout = [], [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            p, c, x = pairs[i].prompt, pairs[i].chosen, pairs[i].rejected
            n = len(p) + len(c) + len(x)
            ids[r, at:at + n] = torch.tensor(p + c + x)
            positions[r, at:at + n] = torch.tensor([*range(len(p) + len(c)), *range(len(p), len(p) + len(x))])
            owner[r, at:at + n] = i
            layout.append(Segment(r, at, len(p), len(c), len(x)))
            side[r, at + len(p):at + len(p) + len(c)] = 1
            side[r, at + len(p) + len(c):at + n] = 2
            last_prompt = r * width + at + len(p) - 1
            for s, (start, completion) in enumerate(((at + len(p), c), (at + len(p) + len(c), x))):
                # Token k of a completion is predicted by token k-1 of the same completion; token 0 by the prompt.
                sources += [last_prompt] + [r * width + start + k for k in range(len(completion) - 1)]
                targets += completion
                segment += [2 * i + s] * len(completion)
            at += n
    index = torch.arange(width)
    causal = index[None, :, None] >= index[None, None, :]
    same_pair = (owner[:, :, None] == owner[:, None, :]) & (owner[:, None, :] >= 0)
    same_branch = (side[:, None, :] == 0) | (side[:, :, None] == side[:, None, :])
    # Padding attends to itself only, so no softmax row is empty (an empty row gives NaN).
    mask = (causal & same_pair & same_branch) | torch.eye(width, dtype=torch.bool)[None]
    return SharedPrefixBatch(ids, positions, mask[:, None], torch.tensor(sources), torch.tensor(targets),
                             torch.tensor(segment), len(pairs), tuple(layout))


def shared_prefix_logps(model, batch: SharedPrefixBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """Summed completion log-probs and completion lengths of packed pairs: (chosen, rejected, chosen_len,
    rejected_len), each (pairs,). Equal to scoring prompt+chosen and prompt+rejected as separate sequences."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    segments = ({"shared_prefix_index": SegmentIndex.build(batch.layout, batch.input_ids.shape[1], device)}
                if causal_lm.config._attn_implementation == SHARED_PREFIX_ATTENTION else {})
    hidden = causal_lm.get_decoder()(input_ids=batch.input_ids.to(device),
                                     position_ids=batch.position_ids.to(device),
                                     attention_mask=batch.attention_mask.to(device), **segments).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    head = causal_lm.get_output_embeddings()
    token_logps = projected_logps(head, flat[batch.sources.to(device)], batch.targets.to(device))
    segment = batch.segment.to(device)
    sums = torch.zeros(2 * batch.pairs, device=device, dtype=token_logps.dtype).index_add(0, segment, token_logps)
    counts = torch.bincount(segment, minlength=2 * batch.pairs)
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]
