"""Architectures llm-tuning implements itself, for checkpoints whose own code (trust_remote_code) does not run on
the transformers it pins: by model_type, the config, model and tokenizer classes, registered with transformers' Auto
classes at import, so that AutoConfig and AutoModelForCausalLM find them when llm-tuning loads such a folder. For these
types the checkpoint's own code never runs, even with model.trust_remote_code: true."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import cached_file

from ..config.sections import ModelConfig
from ..errors import UserError
from .chatglm.configuration import MODEL_TYPE as CHATGLM
from .chatglm.configuration import ChatGLMConfig
from .chatglm.modeling import ChatGLMForConditionalGeneration
from .chatglm.tokenization import chatglm3_tokenizer
from .resolve import model_config_dict


@dataclass(frozen=True)
class Architecture:
    name: str
    config: type
    model: type
    tokenizer_file: str  # the file the tokenizer is built from
    tokenizer: Callable[[Path], object]
    matches: Callable[[dict], bool]  # the checkpoints of the model type it implements, by their config.json


BUILT_IN = {
    CHATGLM: Architecture(
        name="ChatGLM",
        config=ChatGLMConfig,
        model=ChatGLMForConditionalGeneration,
        tokenizer_file="tokenizer.model",
        tokenizer=chatglm3_tokenizer,
        # ChatGLM2/3 and GLM-4's original checkpoints; the first ChatGLM-6B (same model_type) has no padded_vocab_size
        matches=lambda config: "padded_vocab_size" in config,
    ),
}


def register() -> None:
    for model_type, architecture in BUILT_IN.items():
        AutoConfig.register(model_type, architecture.config, exist_ok=True)
        AutoModelForCausalLM.register(architecture.config, architecture.model, exist_ok=True)


register()  # at import: whoever loads a model through llm-tuning has imported this module


def architecture_of(resolved_path: str) -> Architecture | None:
    """The built-in architecture for the model at `resolved_path` (a folder, or a hub id), from its config.json."""
    config = model_config_dict(resolved_path) or {}
    architecture = BUILT_IN.get(config.get("model_type") or "")
    return architecture if architecture is not None and architecture.matches(config) else None


def allows_remote_code(model_config: ModelConfig, resolved_path: str) -> bool:
    """model.trust_remote_code, except for a built-in architecture, whose own code is never run."""
    return model_config.trust_remote_code and architecture_of(resolved_path) is None


def remote_code_note(model_config: ModelConfig, resolved_path: str) -> str | None:
    """What a run's `adjustments` say when the built-in architecture replaces the model's own code."""
    architecture = architecture_of(resolved_path)
    if architecture is None or not model_config.trust_remote_code:
        return None
    return (
        f"model.trust_remote_code: the model's own code is not run; it loads with llm-tuning's built-in {architecture.name} "
        "architecture (same weights, same module names)"
    )


def built_in_tokenizer(architecture: Architecture, path: str):
    """The built-in tokenizer of a folder or hub id, from its tokenizer file."""
    local = Path(path, architecture.tokenizer_file)
    if Path(path).is_dir() and not local.is_file():
        raise UserError(
            f"model '{path}' has no {architecture.tokenizer_file}, which the built-in {architecture.name} tokenizer needs"
        )
    return architecture.tokenizer(local if local.is_file() else Path(cached_file(path, architecture.tokenizer_file)))


def keep_original_files(resolved_path: str, folder: Path) -> list[str]:
    """Into a model folder written from a built-in architecture (merge), the base's own tokenizer files and code:
    its tokenizer file, its tokenizer_config.json and its code files (a hub id's: those auto_map names), so that the
    folder loads with the original code too (on the transformers that code supports) and llm-tuning rebuilds the same
    tokenizer. Returns the files copied."""
    architecture = architecture_of(resolved_path)
    if architecture is None:
        return []
    names = [architecture.tokenizer_file, "tokenizer_config.json"]
    if Path(resolved_path).is_dir():  # every code file: those auto_map names import others (quantization.py)
        names += sorted(path.name for path in Path(resolved_path).glob("*.py"))
    for config_name in ("config.json", "tokenizer_config.json"):
        source = _base_file(resolved_path, config_name)
        auto_map = json.loads(source.read_text(encoding="utf-8")).get("auto_map", {}) if source else {}
        for reference in auto_map.values():
            for entry in reference if isinstance(reference, list) else [reference]:
                if entry:
                    names.append(entry.split("--")[-1].split(".")[0] + ".py")
    copied = []
    for name in dict.fromkeys(names):
        source = _base_file(resolved_path, name)
        if source is not None:
            shutil.copyfile(source, folder / name)
            copied.append(name)
    _restore_config_keys(_base_file(resolved_path, "config.json"), folder / "config.json")
    return copied


def _restore_config_keys(base_config: Path | None, saved_config: Path) -> None:
    """The base config.json's keys that transformers does not write back (`_name_or_path`, which llama.cpp's
    converter reads to tell ChatGLM3's vocabulary from GLM-4's), and `torch_dtype` for the original code, which
    builds its layers in it: the saved dtype."""
    if base_config is None:
        return
    saved = json.loads(saved_config.read_text(encoding="utf-8"))
    base = json.loads(base_config.read_text(encoding="utf-8"))
    restored = {**{k: v for k, v in base.items() if k not in saved and k != "torch_dtype"}, **saved}
    if "dtype" in saved:
        restored["torch_dtype"] = saved["dtype"]
    saved_config.write_text(json.dumps(restored, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _base_file(resolved_path: str, name: str) -> Path | None:
    local = Path(resolved_path, name)
    if local.is_file():
        return local
    if Path(resolved_path).is_dir():
        return None
    try:
        return Path(cached_file(resolved_path, name))
    except OSError:
        return None
