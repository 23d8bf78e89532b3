"""Shared fixtures: the real SmolLM2 (converted once into CAI_HOME) and tiny random models built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from policies.runtime import configure_threads

# Property tests judge correctness, not speed: a busy 2-core machine must not fail them on a deadline.
settings.register_profile("cai", deadline=None)
settings.load_profile("cai")

# Tests run on 2 cores: one deliberate thread count instead of torch's default.
configure_threads(int(os.environ.get("CAI_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def cai_home() -> Path:
    return Path(os.environ.get("CAI_HOME", "~/.cache/cai")).expanduser()


@pytest.fixture(scope="session")
def smollm2_dir(cai_home: Path) -> Path:
    from policies.models import DEFAULT_MODEL, resolve_model_dir

    return resolve_model_dir(DEFAULT_MODEL, cai_home)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template: fast, but real code paths."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
