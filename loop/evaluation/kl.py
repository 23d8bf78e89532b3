"""KL(new || reference) along the new policy's own completions, from full-vocabulary token log-probs.

For a completion y of prompt x, KL(p_new(.|x) || p_ref(.|x)) over whole sequences equals, by the chain rule,
E_{y ~ p_new} [ sum_t KL(p_new(.|x, y_<t) || p_ref(.|x, y_<t)) ]: the per-position KL over the whole
vocabulary, summed along the completion. Evaluating the inner sum exactly at every position (instead of the
single sampled token's log-ratio) removes the sampling noise of the usual k1 estimator; on greedy answers it
measures the drift along the answers the policy actually gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch

from policies.training.data import completion_states


def completion_log_distributions(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs over the vocabulary (N, V), row of each (N,)) at the N positions that predict a completion
    token of a collated batch (`policies.training.data.collate_sequences`)."""
    causal_lm, states, _, rows = completion_states(model, batch)
    logits = causal_lm.get_output_embeddings()(states).float()
    return torch.log_softmax(logits, dim=-1), rows


def token_kl(new_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(new || ref) per position over the vocabulary: (N, V), (N, V) -> (N,)."""
    return (new_logp.exp() * (new_logp - ref_logp)).sum(-1)


def sequence_kl(new_logp: torch.Tensor, ref_logp: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per-position KL summed per completion: (n_rows,)."""
    per_token = token_kl(new_logp, ref_logp)
    return torch.zeros(n_rows, dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)


Switch = Callable[[], AbstractContextManager]
"""Enters the state in which the shared model is one policy (an adapter on, or adapters off)."""


def completion_kls(model, batches: Iterator[dict[str, torch.Tensor]], new: Switch,
                   others: dict[str, Switch]) -> dict[str, list[float]]:
    """For each batch row, KL(new || other) summed along its completion, for every named other policy."""
    results: dict[str, list[float]] = {name: [] for name in others}
    with torch.inference_mode():
        for batch in batches:
            with new():
                new_logp, rows = completion_log_distributions(model, batch)
            for name, switch in others.items():
                with switch():
                    other_logp, _ = completion_log_distributions(model, batch)
                results[name] += sequence_kl(new_logp, other_logp, rows, batch["input_ids"].shape[0]).tolist()
    return results
