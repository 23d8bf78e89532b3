"""One copy of the base weights holding every policy an evaluation needs, each a named LoRA adapter.

Version 0 is the base itself (adapters disabled): the reference for KL and, unless `judge.model` names
another model, the judge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from policies.models import load_model
from policies.serving import Conversation, Generator, Progress, SamplingParams
from policies.serving.control_tokens import restore
from policies.serving.transformers_backend import TransformersGenerator


class ServedPolicies(Protocol):
    """Policies and the judge on a server (`generation.backend: vllm-server`): a version by its adapter."""

    backend: str  # in the key of the base's cached answers: another backend's greedy answers may differ

    def policy(self, version: int, adapter: Path | None) -> Generator: ...

    def judge(self) -> Generator: ...


def greedy_answers(generator: Generator, tokenizer, conversations: Sequence[Conversation], limit: int,
                   progress: Progress | None = None) -> list[tuple[str, int]]:
    """Each conversation's greedy answer and its length in tokens: from the token ids where the generator gives
    them (in-process), else the text's own tokens (a server answers in text)."""
    params = SamplingParams(limit, temperature=0.0)
    generate_tokens = getattr(generator, "generate_tokens", None)  # in-process generators have it
    if generate_tokens is not None:
        return [(restore(tokenizer.decode(ids, skip_special_tokens=True)).strip(), len(ids))
                for ids in generate_tokens(conversations, params, progress)]
    # A served answer comes back restored (`VllmServerGenerator`).
    return [(text.strip(), len(tokenizer(text, add_special_tokens=False)["input_ids"]))
            for text in generator.generate(conversations, params, progress)]


class PolicyBank:
    def __init__(self, model_dir: Path, adapters: Mapping[int, Path], *, dtype: str, device: str):
        model, self.tokenizer = load_model(model_dir, dtype=dtype, device=device)
        self.versions = sorted(v for v in adapters if v != 0)
        if self.versions:
            from peft import PeftModel

            first, *rest = self.versions
            model = PeftModel.from_pretrained(model, adapters[first], adapter_name=_name(first))
            for version in rest:
                model.load_adapter(adapters[version], adapter_name=_name(version))
        model.eval()
        self.model = model

    @contextlib.contextmanager
    def active(self, version: int) -> Iterator[None]:
        """The shared model answers as policy `version` inside the block."""
        if version == 0:
            with self.model.disable_adapter() if self.versions else contextlib.nullcontext():
                yield
            return
        if version not in self.versions:
            raise KeyError(f"policy v{version} is not loaded")
        self.model.set_adapter(_name(version))
        yield

    def generator(self, version: int, *, name: str, batch_size: int) -> TransformersGenerator:
        return _VersionGenerator(self, version, name=name, batch_size=batch_size)


def _name(version: int) -> str:
    return f"v{version}"


class _VersionGenerator(TransformersGenerator):
    """A generator pinned to one policy of the bank: every call switches the shared model to it."""

    def __init__(self, bank: PolicyBank, version: int, *, name: str, batch_size: int):
        super().__init__(bank.model, bank.tokenizer, name=name, batch_size=batch_size)
        self._bank, self._version = bank, version

    def _adapter_context(self):
        return self._bank.active(self._version)
