"""How the training processes share the model: DDP (a full copy in each; the default), FSDP (`train.fsdp`) or
DeepSpeed ZeRO (`train.deepspeed: FILE`). The Trainer, through accelerate, does the sharding; this module reads
the user's choice once, checks it before anything loads, turns it into the Trainer's arguments and tells the
memory estimate (memory/estimate.py) what each process holds."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..config.sections import Config
from ..errors import UserError
from ..methods.selection import decoder_layers

ZERO_STAGES = (2, 3)


@dataclass(frozen=True)
class Sharding:
    """What each of the processes holds of the model's training state."""

    kind: str
    """`ddp`, `fsdp` or `zero`."""
    weights_sharded: bool = False
    """The base weights are divided between the processes (FSDP full_shard, ZeRO-3)."""
    states_sharded: bool = False
    """Gradients and optimizer states are divided between the processes (FSDP, ZeRO-2 and -3)."""
    optimizer_offloaded: bool = False
    """The optimizer states live in host memory (DeepSpeed's offload_optimizer), not on the GPU."""
    weights_offloaded: bool = False
    """The weights live in host memory between uses (DeepSpeed's offload_param, ZeRO-3 only)."""

    def describe(self) -> str:
        if self.kind == "ddp":
            return "DDP: a full copy of weights, gradients and optimizer states in every process"
        shared = "weights, gradients and optimizer states" if self.weights_sharded else "gradients and optimizer states"
        offload = " (optimizer states offloaded to host memory)" if self.optimizer_offloaded else ""
        return f"{self.kind.upper()}: {shared} divided between the processes{offload}"


def sharding_of(config: Config) -> Sharding:
    """The sharding `config` asks for (train.fsdp or train.deepspeed), its DeepSpeed file read and checked."""
    t = config.train
    if t.deepspeed and t.fsdp != "none":
        raise UserError("train.fsdp and train.deepspeed are two ways to shard: set one of them, not both")
    if t.deepspeed:
        zero = read_deepspeed_config(t.deepspeed).get("zero_optimization") or {}
        stage = zero.get("stage")
        if stage not in ZERO_STAGES:
            raise UserError(
                f"train.deepspeed: {t.deepspeed} sets zero_optimization.stage to {stage!r}; llm-tuning runs ZeRO stage 2 or 3"
            )
        return Sharding(
            "zero",
            weights_sharded=stage == 3,
            states_sharded=True,
            optimizer_offloaded=_offloaded(zero, "offload_optimizer"),
            weights_offloaded=stage == 3 and _offloaded(zero, "offload_param"),
        )
    if t.fsdp != "none":
        return Sharding("fsdp", weights_sharded=t.fsdp == "full_shard", states_sharded=True)
    return Sharding("ddp")


def read_deepspeed_config(path: str) -> dict:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"train.deepspeed: {path} not found (examples/deepspeed/ holds ZeRO-2 and ZeRO-3 files)") from None
    except OSError as e:
        raise UserError(f"train.deepspeed: cannot read {path}: {e.strerror}") from None
    try:
        settings = json.loads(text)
    except ValueError as e:
        raise UserError(f"train.deepspeed: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(settings, dict):
        raise UserError(f"train.deepspeed: {path} must hold a JSON object")
    return settings


def _offloaded(zero: dict, key: str) -> bool:
    return (zero.get(key) or {}).get("device", "none") not in ("none", None)


def check_sharding(config: Config, has_gpu: bool) -> Sharding:
    """Refuse, in one line, what cannot run here: bottleneck adapters sharded, DeepSpeed without its package or
    without a GPU, FSDP without a GPU or with a quantized base."""
    sharding = sharding_of(config)
    if sharding.kind != "ddp" and config.method.name == "adapter":
        raise UserError(
            f"method adapter with {'train.fsdp' if sharding.kind == 'fsdp' else 'train.deepspeed'}: bottleneck adapters "
            "are saved from whole weights, which sharding spreads over the processes; train them with DDP"
        )
    if sharding.kind == "zero":
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("train.deepspeed needs the deepspeed package: pip install 'llm-tuning[deepspeed]'")
        if not has_gpu:
            raise UserError(
                "train.deepspeed: DeepSpeed trains on GPUs only and none is visible here; on a CPU use train.fsdp or DDP"
            )
    if sharding.kind == "fsdp" and not has_gpu:
        raise UserError(
            f"train.fsdp={config.train.fsdp} needs GPUs: accelerate (the Trainer's engine) shards with FSDP on GPUs only and "
            "on a CPU would silently train with DDP instead; set train.fsdp=none here (docs/distributed.md)"
        )
    if sharding.kind == "fsdp" and config.model.quantization != "none":
        raise UserError(
            f"train.fsdp={config.train.fsdp} with model.quantization={config.model.quantization}: FSDP cannot shard "
            "bitsandbytes' quantized weights here; use DDP (train.fsdp=none)"
        )
    return sharding


def trainer_arguments(config: Config, model) -> dict:
    """The Trainer's arguments for the sharding: FSDP wrapping each decoder layer of `model`, or DeepSpeed."""
    t = config.train
    if t.deepspeed:
        return {"deepspeed": str(Path(t.deepspeed).expanduser())}
    if t.fsdp == "none":
        return {}
    layer = decoder_layer_class(model)
    return {"fsdp": f"{t.fsdp} auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": [layer]}}


def decoder_layer_class(model) -> str:
    """The class name of the model's decoder layers (FSDP wraps each as one unit)."""
    return type(decoder_layers(model)[1][0]).__name__


def gathered_state(trainer) -> dict | None:
    """Under FSDP or ZeRO the trained weights are spread over the processes: their full state dict, gathered (every
    process must call this; the main one gets the tensors). None under DDP, where each process has them whole."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)
