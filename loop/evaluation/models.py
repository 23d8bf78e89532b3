"""One copy of the base weights holding every policy an evaluation needs, each a named LoRA adapter.

Version 0 is the base itself (adapters disabled): the reference for KL and, unless `judge.model` names
another model, the judge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from policies.models import load_model
from policies.serving.transformers_backend import TransformersGenerator


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
