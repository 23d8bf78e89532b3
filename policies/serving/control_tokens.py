"""Control tokens never come from text: the chat template's markers are defused in message contents.

A tokenizer matches its special tokens (`<|im_start|>`, `<|im_end|>`, ...) anywhere in the text it encodes, so
a prompt or an answer carrying their literal text would open and close turns of its own in front of the policy
or the judge. `neutralise` puts an invisible marker after the first character of every such string in a message's
content; the template's own markers, added when the conversation is rendered, stay real tokens.

Why neutralise the contents rather than tokenise them with `split_special_tokens=True` and assemble the template
ourselves: a vLLM server renders the template from `messages` and tokenises the result itself, so the contents
are the only thing a client controls there. One transformation of the contents gives the in-process backend,
the server and training the same tokens for the same conversation.

Torch-free: the vLLM client and the loop import it; a tokenizer is only read through its attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from policies.serving.protocol import Conversation

CONTROL_TOKENS_IN_ANSWERS = "control_tokens_in_answers"
"""The metric counting a stage's answers that spell a control token of the tokenizer (`metrics.name` of the generate
and critique stages, an `eval_metrics` name of the evaluation, with `previous_` and `base_` beside it)."""

MARK = "\u2060"
"""WORD JOINER: zero-width, no joining behaviour, unchanged by NFC/NFKC normalisation. Not ZERO WIDTH JOINER
(U+200D), which real text carries inside emoji sequences that `restore` would then break."""

COMMON_SPECIALS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",  # ChatML
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",  # Phi-3
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",  # Gemma
    "<s>", "</s>", "[INST]", "[/INST]",  # Llama 2, Mistral
)
"""For a served model whose tokenizer is not at hand: the control tokens of the common chat templates. Defusing
a string that is not special for the model changes nothing visible."""


def specials_of(tokenizer) -> tuple[str, ...]:
    """The strings a tokenizer turns into control tokens wherever they appear: its special tokens and the added
    tokens marked special. Added tokens not marked special are left alone: some tokenizers add ordinary pieces
    (runs of spaces) that way, and defusing those would change the text's tokens for nothing."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    found = [*tokenizer.all_special_tokens, *(t.content for t in added if t.special)]
    return tuple(sorted(set(found), key=lambda s: (-len(s), s)))


@lru_cache(maxsize=32)
def _starts(specials: tuple[str, ...]) -> re.Pattern[str]:
    """A pattern that matches the first character of every (possibly overlapping) occurrence of a special."""
    kept = sorted({s for s in specials if s}, key=lambda s: (-len(s), s))
    if any(len(s) < 2 for s in kept):
        # No marker can go inside a one-character token: refuse rather than let it through.
        raise ValueError(f"cannot neutralise one-character control tokens: {[s for s in kept if len(s) < 2]}")
    if not kept:
        return re.compile(r"(?!)")
    return re.compile("(?=" + "|".join(map(re.escape, kept)) + ")(.)", re.DOTALL)


def neutralise(text: str, specials: Iterable[str]) -> str:
    """`text` with a zero-width marker after the first character of each occurrence of a special string.

    Every occurrence gets its marker, overlapping ones too, so no special string is left: any substring without
    an inserted marker was a substring of `text`, and every occurrence there now has a marker inside it.
    """
    return _starts(tuple(specials)).sub(lambda m: m.group(1) + MARK, text)


def restore(text: str) -> str:
    """The text before `neutralise` (for display): exact unless the text already carried the marker."""
    return text.replace(MARK, "")


def contains_control_tokens(text: str, specials: Iterable[str]) -> bool:
    """Whether `text` holds the literal string of a control token (it would be one, unneutralised)."""
    return any(s and s in text for s in specials)


def neutralise_conversation(conversation: Conversation, specials: Sequence[str]) -> Conversation:
    """The conversation with every message's content neutralised (roles are the template's, not text's)."""
    return [{**message, "content": neutralise(message["content"], specials)} for message in conversation]


def check_tokenizer(tokenizer, specials: Sequence[str]) -> None:
    """Refuse a tokenizer that still finds a control token in neutralised text (a normaliser that drops
    zero-width characters before matching would)."""
    # The unknown token is left out: a vocabulary without byte fallback may spell the marker itself with it.
    special_ids = {tokenizer.convert_tokens_to_ids(s) for s in specials} - {getattr(tokenizer, "unk_token_id", None)}
    for special in specials:
        ids = tokenizer(neutralise(f"a{special}b", specials), add_special_tokens=False)["input_ids"]
        if special_ids.intersection(ids):
            raise ValueError(f"this tokenizer still reads the control token {special!r} in neutralised text")
