"""The `Generator` protocol on an HF transformers model (optionally a PEFT model), batched, in-process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from policies.serving.control_tokens import check_tokenizer, neutralise_conversation, restore, specials_of
from policies.serving.protocol import Conversation, Progress, SamplingParams


class TransformersGenerator:
    """Batched generation and scoring with an HF transformers model (optionally a PEFT model).

    With `use_adapter=False` a PEFT model answers as its frozen base: that is how the judge and the
    reference share one copy of the weights with the policy.
    """

    def __init__(self, model, tokenizer, *, name: str, batch_size: int = 16, use_adapter: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.use_adapter = use_adapter
        self.device = next(model.parameters()).device
        self.specials = specials_of(tokenizer)
        check_tokenizer(tokenizer, self.specials)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams,
                 progress: Progress | None = None, *, samples: int = 1) -> list[str]:
        """One reply per conversation, or `samples` replies each, consecutively (conversation 0's first). A marker
        the model copied from a neutralised prompt is taken out: the text reads as the model wrote it."""
        return [restore(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
                for tokens in self.generate_tokens(conversations, params, progress, samples=samples)]

    def generate_tokens(self, conversations: Sequence[Conversation], params: SamplingParams,
                        progress: Progress | None = None, *, samples: int = 1) -> list[list[int]]:
        """The sampled token ids of each reply, up to and including its end-of-turn token if one was sampled.

        RL needs the exact tokens that were sampled: re-tokenising decoded text can give a different sequence.
        With `samples` > 1, that many replies per conversation (consecutively), drawn by one `generate` call per
        batch with `num_return_sequences`, so the batch size still bounds the sequences held at once.
        """
        if samples > 1 and params.temperature <= 0:
            raise ValueError(f"{samples} samples per conversation need a temperature above 0 (greedy repeats one)")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        # top_k is disabled explicitly: the model's generation defaults would otherwise truncate sampling.
        options = {"do_sample": sampling, "max_new_tokens": params.max_new_tokens, "top_k": None}
        if sampling:
            options |= {"temperature": params.temperature, "top_p": params.top_p}
        else:  # silence the model's default sampling settings when decoding greedily
            options |= {"temperature": None, "top_p": None}
        eos = sorted({self.tokenizer.eos_token_id, *self._eos_ids()})
        outputs: dict[int, list[int]] = {}
        for indices, batch in self._batches(conversations, max(1, self.batch_size // samples)):
            with self._adapter_context(), torch.inference_mode():
                generated = self.model.generate(
                    **batch, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos,
                    num_return_sequences=samples, **options
                )
            # Row j of the output is sample j % samples of the batch's conversation j // samples.
            for row, tokens in enumerate(generated[:, batch["input_ids"].shape[1]:].tolist()):
                end = next((i for i, t in enumerate(tokens) if t in eos), None)
                slot = indices[row // samples] * samples + row % samples
                outputs[slot] = tokens if end is None else tokens[: end + 1]
            if progress:
                progress(len(indices) * samples)
        return [outputs[i] for i in range(len(conversations) * samples)]

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        progress: Progress | None = None) -> list[list[float]]:
        choice_ids = [self._single_token(choice) for choice in choices]
        scores: dict[int, list[float]] = {}
        for indices, batch in self._batches(conversations):
            with self._adapter_context(), torch.inference_mode():
                # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, choice_ids]
            for index, row in zip(indices, logprobs.tolist(), strict=True):
                scores[index] = row
            if progress:
                progress(len(indices))
        return [scores[i] for i in range(len(conversations))]

    def render(self, conversation: Conversation) -> str:
        """The chat-templated prompt text: a reply is generated (or continued) right after it. Control-token
        strings in the contents are neutralised: only the template's own markers become control tokens."""
        continues = conversation[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            neutralise_conversation(conversation, self.specials), tokenize=False,
            add_generation_prompt=not continues, continue_final_message=continues,
        )

    def _batches(self, conversations: Sequence[Conversation],
                 size: int | None = None) -> Iterator[tuple[list[int], dict]]:
        """Left-padded batches of `size` (default: the batch size) of similar length (longest first), with their
        original indices."""
        size = size or self.batch_size
        encoded = [self.tokenizer(self.render(c), add_special_tokens=False)["input_ids"] for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        for start in range(0, len(order), size):
            indices = order[start:start + size]
            width = max(len(encoded[i]) for i in indices)
            pad = self.tokenizer.pad_token_id
            ids = [[pad] * (width - len(encoded[i])) + encoded[i] for i in indices]
            mask = [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in indices]
            yield indices, {
                "input_ids": torch.tensor(ids, device=self.device),
                "attention_mask": torch.tensor(mask, device=self.device),
            }

    def _single_token(self, choice: str) -> int:
        ids = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"choice {choice!r} is {len(ids)} tokens for this tokenizer; choices must be 1 token")
        return ids[0]

    def _eos_ids(self) -> list[int]:
        # Chat models end a turn with their own end-of-turn token, which may differ from eos_token.
        eos = self.model.generation_config.eos_token_id
        return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def _adapter_context(self):
        if not self.use_adapter and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()
