"""The run configuration: four typed sections (`model`, `method`, `data`, `train`) from one YAML file
plus `section.key=value` overrides.

Each field carries its own help text and constraints in `field(metadata=...)`, so that validation,
error messages and the README's config reference all come from this one place. The `method` section
is typed by the chosen method's own options class (see `methods/`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def option(default: Any, help: str, choices: tuple = (), min: float | None = None, max: float | None = None):
    """A config field with its documentation and constraints (min/max are inclusive)."""
    metadata = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    path: str = option("smollm2-135m", "Base model: a local Hugging Face folder, a built-in alias (smollm2-135m) or a hub id.")
    trust_remote_code: bool = option(
        False, "Run the model's own Python code from its folder or hub repository. Only for models you trust."
    )
    dtype: str = option(
        "float32",
        "The dtype the base model is loaded in (bf16/fp16 matrix products are very slow on most CPUs).",
        choices=("float32", "bfloat16", "float16"),
    )
    quantization: str = option(
        "none",
        "Load the base quantized with bitsandbytes: `8bit` (LLM.int8) or `4bit` (QLoRA); only adapters train on it.",
        choices=("none", "8bit", "4bit"),
    )
    int8_threshold: float = option(
        6.0, "8bit: outlier threshold; activations above it are computed in higher precision.", min=0.0
    )
    quant_type: str = option("nf4", "4bit: the data type, NormalFloat4 or FP4.", choices=("nf4", "fp4"))
    double_quant: bool = option(True, "4bit: also quantize the quantization constants (saves ~0.4 bits per parameter).")
    compute_dtype: str = option(
        "auto",
        "4bit: the dtype matrix products run in (`auto`: model.dtype).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )


@dataclass
class DataConfig:
    path: str | list[str] | None = option(
        None,
        "Training data, one source or a list: Alpaca records (instruction, input, output), ShareGPT `conversations` or "
        "OpenAI-style `messages`, in .json, .jsonl, .csv or .parquet, a `save_to_disk` folder, or a hub dataset id (org/name).",
    )
    columns: dict[str, str] | None = option(
        None,
        "Map our field names to the data's own, e.g. {instruction: context, output: target} (also input, system, messages, conversations).",
    )
    template: str = option(
        "auto",
        "Prompt format: `plain` (`Human: {instruction}\\n{input}\\n\\nAssistant: `), `native` (the tokenizer's chat template), "
        "`llama2`, `llama3`, `chatglm3`, `chatml`; `auto`: native when the tokenizer has a chat template, else the model "
        "family's format, else plain.",
        choices=("auto", "plain", "native", "llama2", "llama3", "chatglm3", "chatml"),
    )
    system: str | None = option(None, "System prompt for every example that has none of its own.")
    skip_invalid: bool = option(
        False,
        "Skip bad records (missing or non-string fields, empty answers, broken lines) instead of stopping; they are counted in the run summary.",
    )
    val_ratio: float = option(0.0, "Share of the (shuffled) examples held out for validation.", min=0.0, max=0.5)
    val_path: str | list[str] | None = option(None, "Validation data (same formats as path); takes the place of val_ratio.")
    seed: int = option(42, "Seed of the shuffle before the validation split.")
    max_length: int = option(512, "Longest sample in tokens; longer samples are cut there and get no EOS.", min=8)
    packing: bool = option(
        True,
        "Pack several samples into each row of up to max_length tokens (no compute on padding; attention stays inside each "
        "sample). A micro-batch is then batch_size rows. Methods with virtual tokens or prefixes, and models without position "
        "ids (BLOOM), train unpacked, batches grouped by length.",
    )


@dataclass
class TrainConfig:
    output_dir: str = option("runs/default", "Where the adapter, checkpoints, log and run summary go.")
    max_steps: int | None = option(None, "Optimizer steps to run; when set it takes precedence over num_epochs.", min=1)
    num_epochs: float = option(1.0, "Passes over the data (when max_steps is not set).", min=0.0)
    batch_size: int = option(4, "Samples per micro-batch.", min=1)
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", min=1)
    learning_rate: float = option(2.0e-4, "Peak learning rate (AdamW).", min=0.0)
    lr_scheduler: str = option(
        "cosine",
        "Learning-rate schedule after warmup.",
        choices=("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"),
    )
    warmup_ratio: float = option(
        0.03, "Share of the steps spent warming up the learning rate linearly from 0.", min=0.0, max=0.99
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 turns clipping off).", min=0.0)
    eval_steps: int | None = option(
        None,
        "Validation loss every N optimizer steps (with data.val_ratio or data.val_path); without it, once at the end.",
        min=1,
    )
    logging_steps: int = option(5, "Log the loss every N optimizer steps.", min=1)
    save_steps: int = option(50, "Write a checkpoint every N optimizer steps.", min=1)
    save_total_limit: int | None = option(2, "Keep at most this many checkpoints (oldest deleted first); null keeps all.", min=1)
    seed: int = option(42, "Random seed for initialisation, dropout and data order.")
    overwrite: bool = option(False, "Allow writing into a non-empty output_dir (its old contents are deleted).")
    resume: bool = option(False, "Continue from the last checkpoint in output_dir.")
    precision: str = option(
        "fp32",
        "Mixed precision for forward and backward: `bf16`, `fp16` (GPU only; with loss scaling) or none (`fp32`).",
        choices=("fp32", "bf16", "fp16"),
    )
    keep_trainable_fp32: bool = option(
        True, "Keep trained parameters in float32 on a half-precision base (recommended; false trains them in model.dtype)."
    )
    optimizer: str = option(
        "adamw",
        "`adamw` (PyTorch), `adamw_8bit` (bitsandbytes, needs that package) or `adafactor`.",
        choices=("adamw", "adamw_8bit", "adafactor"),
    )
    adam_epsilon: float = option(
        1.0e-8, "AdamW epsilon; raised to 1e-4 automatically when trained parameters are float16.", min=0.0
    )
    loss_chunk_size: int = option(
        512,
        "Compute the LM head and the loss only at labelled positions, this many at a time, never holding full-vocabulary "
        "logits for the batch; 0 = transformers' own loss over full logits.",
        min=0,
    )
    lean_activations: bool = option(
        True,
        "Keep fewer tensors for backward with the same results: gated MLPs keep gate and up only (the activation is "
        "recomputed), LoRA dropout keeps a 1-byte mask and the shared input.",
    )
    cpu_matmul: str = option(
        "auto",
        "Which library multiplies frozen fp32 linear layers on a CPU: `torch` (MKL on x86), `onednn` (faster on AMD "
        "CPUs, where MKL runs a generic path; see README's Speed), or `auto`: oneDNN on x86 CPUs not made by Intel, torch elsewhere.",
        choices=("auto", "torch", "onednn"),
    )
    gradient_checkpointing: bool = option(
        False,
        "Recompute each layer's activations in the backward pass instead of keeping them: less memory, about a third more compute.",
    )
    checkpointing_reentrant: bool = option(
        False,
        "Use torch's reentrant checkpointing (input gradients are enabled automatically); the default non-reentrant kind is the one that works with every method.",
    )
    check_memory: bool = option(
        True, "Before training, refuse a run whose estimated peak memory exceeds what is free, and say what would fit."
    )
    report_to: str = option(
        "none", "Also log to TensorBoard (`tensorboard`, needs the tensorboard package).", choices=("none", "tensorboard")
    )


SECTIONS = ("model", "method", "data", "train")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # the options dataclass of the chosen method, see methods.method_options
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(source: str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from a YAML path (or a dict, or nothing: all defaults) and `key=value` overrides."""
    raw, where = _read_source(source)
    for item in overrides:
        section, key, value = _parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config section '{section}' must be a mapping, got {type(raw[section]).__name__}")
        raw[section][key] = value
        where[f"{section}.{key}"] = f"override '{item}'"
    return build_config(raw, where)


def build_config(raw: dict, where: dict[str, str] | None = None) -> Config:
    from .methods import method_options  # the method registry depends on config helpers, not the reverse

    where = where or {}
    for section in raw:
        if section not in SECTIONS:
            raise UserError(f"unknown config section '{section}'{_at(where, section)}; valid sections: {', '.join(SECTIONS)}")
        if raw[section] is not None and not isinstance(raw[section], dict):
            raise UserError(f"config section '{section}'{_at(where, section)} must be a mapping of keys to values")
    config = Config(
        model=build_section(ModelConfig, "model", raw.get("model") or {}, where),
        method=method_options(dict(raw.get("method") or {}), where),
        data=build_section(DataConfig, "data", raw.get("data") or {}, where),
        train=build_section(TrainConfig, "train", raw.get("train") or {}, where),
    )
    _absolutize_paths(config)
    return config


def build_section(cls: type, section: str, values: dict, where: dict[str, str]):
    """Instantiate dataclass `cls` from `values`, checking names, types and constraints."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{section}.{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{section}.{close[0]}'?)" if close else ""
            raise UserError(
                f"unknown config key '{path}'{_at(where, path)}{hint}; valid keys in '{section}': {', '.join(fields)}"
            )
        kwargs[key] = _check_value(path, value, hints[key], fields[key].metadata, where)
    return cls(**kwargs)


def _check_value(path: str, value: Any, hint: Any, meta: typing.Mapping, where: dict[str, str]) -> Any:
    try:
        value = _coerce(value, hint)
    except TypeError as e:
        raise UserError(f"config key '{path}'{_at(where, path)}: expected {e}, got {value!r}") from None
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise UserError(f"config key '{path}'{_at(where, path)}: {value!r} is not one of: {', '.join(map(str, choices))}")
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}" if low is not None else f"<= {high}"
            raise UserError(f"config key '{path}'{_at(where, path)}: {value!r} is out of range; it must be {bounds}")
    return value


def _coerce(value: Any, hint: Any) -> Any:
    """Return `value` as type `hint`, or raise TypeError naming the expected type."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option_type in options:
            if option_type is type(None):
                continue
            try:
                return _coerce(value, option_type)
            except TypeError:
                pass
        raise TypeError(_type_name(hint))
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise TypeError(_type_name(hint))
        return [_coerce(item, item_type) for item in value]
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise TypeError(_type_name(hint))
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `2e-4` (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    raise AssertionError(f"unsupported config type {hint}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_name(hint: Any) -> str:
    """The type in words, for messages and the README: "a list of strings or a string or null"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(hint))
    if origin is list:
        return "a list of " + _type_name(typing.get_args(hint)[0]).split(" ", 1)[1] + "s"
    if origin is dict:
        return "a mapping of names to " + _type_name(typing.get_args(hint)[1]).split(" ", 1)[1] + "s"
    return _TYPE_NAMES[hint]


def _at(where: dict[str, str], path: str) -> str:
    return f" ({where[path]})" if path in where else ""


def _read_source(source: str | Path | dict | None) -> tuple[dict, dict[str, str]]:
    if source is None:
        return {}, {}
    if isinstance(source, dict):
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in source.items()}, {}
    path = Path(source)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{line}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config must be a mapping with sections {', '.join(SECTIONS)}")
    return raw, {key: f"{path}:{line}" for key, line in lines.items()}


def _key_lines(text: str) -> dict[str, int]:
    """Map `section` and `section.key` to the 1-based line where the YAML file sets them."""
    root = yaml.compose(text)
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for section_node, body in root.value:
        section = section_node.value
        lines[section] = section_node.start_mark.line + 1
        if isinstance(body, yaml.MappingNode):
            for key_node, _ in body.value:
                lines[f"{section}.{key_node.value}"] = key_node.start_mark.line + 1
    return lines


def _parse_override(item: str) -> tuple[str, str, Any]:
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key or "." in key:
        raise UserError(
            f"bad override '{item}': write section.key=value, e.g. train.max_steps=20 (sections: {', '.join(SECTIONS)})"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML (e.g. an unbalanced bracket): take it as the literal string
    return section, key, value


def _absolute_if_local(paths):
    """Data sources made absolute, except hub dataset ids."""
    from .data.records import looks_like_hub_id

    if paths is None:
        return None
    if isinstance(paths, list):
        return [_absolute_if_local(p) for p in paths]
    return paths if looks_like_hub_id(paths) else str(Path(paths).expanduser().resolve())


def _absolutize_paths(config: Config) -> None:
    """Relative paths are taken from the current directory; store them absolute so a run dir works anywhere."""
    config.data.path = _absolute_if_local(config.data.path)
    config.data.val_path = _absolute_if_local(config.data.val_path)
    config.train.output_dir = str(Path(config.train.output_dir).expanduser().resolve())
    model_path = Path(config.model.path).expanduser()
    if model_path.exists():
        config.model.path = str(model_path.resolve())


# --------------------------------------------------------------------------------------------------
# Runs


RUN_CONFIG_FILE = "config.yaml"


def save_run_config(config: Config, run_dir: str | Path) -> None:
    Path(run_dir, RUN_CONFIG_FILE).write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a training run stored in its output directory."""
    path = Path(run_dir, RUN_CONFIG_FILE)
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise UserError(f"{run_dir} is not an llm-tuning run directory: it has no {RUN_CONFIG_FILE}")
    return load_config(path)


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every option of the fixed sections: the README's config reference."""
    rows = []
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        rows.extend(section_reference(section, cls))
    return rows


def section_reference(section: str, cls: type) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += " Choices: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        rows.append(
            (
                f"{section}.{f.name}",
                _type_name(hints[f.name]),
                yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n..."),
                help_text,
            )
        )
    return rows
