"""Attention for pairs packed as prompt | chosen | rejected (see `data.SharedPrefixBatch`) without a dense mask.

The packed layout needs a block mask (rejected sees the prompt and itself, never chosen), and SDPA's kernels cannot
skip masked blocks: every row costs width² whatever the mask. Here the pairs of a batch are gathered into two
batched causal calls, every prompt + chosen and every prompt + rejected, right-padded: the kernels' causal fast path
with no mask at all (under a causal mask no real token attends to right padding). Only attention sees the prompt
twice; its projections and MLPs still run once per pair. Without a segment index it is plain SDPA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "cai_shared_prefix"


class Segment(NamedTuple):
    """One pair in a packed row: its first column and the lengths of its prompt, chosen and rejected parts."""

    row: int
    start: int
    prompt: int
    chosen: int
    rejected: int

    @property
    def length(self) -> int:
        return self.prompt + self.chosen + self.rejected


@dataclass(frozen=True)
class SegmentIndex:
    """Gather indices into a batch's flattened (rows * width) positions, built once per batch and used by every
    layer: each pair's prompt + chosen, and its prompt + rejected, as right-padded rows. Padding entries point at
    position 0; under a causal mask no real token attends to them, and they are never written back.
    """

    chosen: torch.Tensor  # (pairs, longest prompt + chosen)
    rejected: torch.Tensor  # (pairs, longest prompt + rejected)
    written: torch.Tensor  # bool over chosen's entries then rejected's, flattened: the ones written back
    positions: torch.Tensor  # the flat positions they are written to, in that order

    @classmethod
    def build(cls, segments: Sequence[Segment], width: int, device: torch.device | str = "cpu") -> SegmentIndex:
        def padded(spans: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.zeros(len(spans), max(len(s) for s in spans), dtype=torch.long)
            valid = torch.zeros_like(index, dtype=torch.bool)
            for i, span in enumerate(spans):
                index[i, :len(span)], valid[i, :len(span)] = torch.tensor(span), True
            return index, valid

        bases = [s.row * width + s.start for s in segments]
        chosen, chosen_valid = padded([list(range(b, b + s.prompt + s.chosen))
                                       for b, s in zip(bases, segments, strict=True)])
        rejected, rejected_valid = padded([[*range(b, b + s.prompt), *range(b + s.prompt + s.chosen, b + s.length)]
                                           for b, s in zip(bases, segments, strict=True)])
        # The prompt's outputs come from the chosen rows; the rejected rows contribute only their completion.
        rejected_written = rejected_valid.clone()
        for i, s in enumerate(segments):
            rejected_written[i, :s.prompt] = False
        written = torch.cat([chosen_valid.flatten(), rejected_written.flatten()])
        positions = torch.cat([chosen[chosen_valid], rejected[rejected_written]])
        return cls(*(t.to(device) for t in (chosen, rejected, written, positions)))


def shared_prefix_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0,
                            scaling: float | None = None, shared_prefix_index: SegmentIndex | None = None,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, length, dim) inputs, (batch, length, heads, dim)
    output. Positions outside every pair (a row's trailing padding) get zeros: nothing reads them."""
    if shared_prefix_index is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    index = shared_prefix_index
    groups = getattr(module, "num_key_value_groups", 1)
    q, k, v = (t.transpose(1, 2).reshape(rows * width, t.shape[1], dim) for t in (query, key, value))

    def causal(at: torch.Tensor) -> torch.Tensor:  # (pairs, n) positions -> (pairs * n, heads, dim)
        out = F.scaled_dot_product_attention(q[at].transpose(1, 2), repeat_kv(k[at].transpose(1, 2), groups),
                                             repeat_kv(v[at].transpose(1, 2), groups), dropout_p=dropout,
                                             scale=scaling, is_causal=True)
        return out.transpose(1, 2).reshape(-1, heads, dim)

    values = torch.cat([causal(index.chosen), causal(index.rejected)])[index.written]
    out = q.new_zeros(rows * width, heads, dim).index_copy(0, index.positions, values)
    return out.reshape(rows, width, heads, dim), None


AttentionInterface.register(NAME, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_shared_prefix_attention(model) -> bool:
    """Switch a model on SDPA to this attention (identical without a segment layout). Returns whether it is on:
    other implementations (eager, flash-attention kernels) are left alone and get the dense mask."""
    config = model.config
    if config._attn_implementation == "sdpa":
        config._attn_implementation = NAME
    return config._attn_implementation == NAME
