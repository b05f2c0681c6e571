"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): a small network, down-projection,
non-linearity, up-projection, added with a residual connection after a sublayer of every transformer layer. peft
does not offer them; they are written here as forward hooks on the base's own modules, so the base stays as it is.

Placement: `houlsby` after the attention block and after the MLP, `pfeiffer` after the MLP only. The adapter
reads the sublayer's output before the residual stream adds it: the attention's output projection (o_proj on
Llama, Qwen2 and Gemma; BLOOM's self_attention.dense) and the MLP's down projection (down_proj; BLOOM's
dense_4h_to_h). The up-projection starts at zero, so before training the model computes exactly what the base
does. The adapters keep their own dtype (float32 on a half-precision or quantized base) and cast at their edges.

Parameters per adapter: 2 x hidden x bottleneck + bottleneck + hidden (two weights, two biases); adapters per
layer: 2 (houlsby) or 1 (pfeiffer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config.schema import option
from ..errors import UserError
from .method import Method
from .selection import decoder_layers, train_only

WEIGHTS_FILE = "bottleneck_adapters.safetensors"
CONFIG_FILE = "bottleneck_adapters.json"
ADAPTER_NAME = "bottleneck_adapter"  # the child module each adapted projection carries
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
# the output projections of the attention block and of the MLP, by family
ATTENTION_OUTPUTS = ("self_attn.o_proj", "self_attention.dense", "self_attn.dense")
MLP_OUTPUTS = ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc2")


@dataclass
class Options:
    name: str = option("adapter", "The method: `adapter`.")
    placement: str = option(
        "houlsby",
        "`houlsby`: after the attention block and after the MLP; `pfeiffer`: after the MLP only.",
        choices=("houlsby", "pfeiffer"),
    )
    bottleneck_size: int | None = option(None, "Width of the bottleneck (null: hidden size / reduction_factor).", min=1)
    reduction_factor: int = option(16, "Hidden size / bottleneck width, when bottleneck_size is null.", min=1)
    non_linearity: str = option("relu", "The function between the projections.", choices=tuple(NON_LINEARITIES))
    dropout: float = option(0.0, "Dropout on the bottleneck's activations.", min=0.0, max=0.99)
    layers_to_transform: list[int] | None = option(None, "Only adapt these layer indices (null: all layers).")


class BottleneckAdapter(nn.Module):
    """h + up(dropout(act(down(h)))), in its own dtype."""

    def __init__(self, hidden: int, bottleneck: int, non_linearity: str, dropout: float, device=None):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, device=device, dtype=torch.float32)
        self.act = NON_LINEARITIES[non_linearity]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden, device=device, dtype=torch.float32)
        if self.up.weight.device.type != "meta":
            nn.init.zeros_(self.up.weight)  # the identity at the start: the model computes what the base does
            nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = self.up.weight.dtype
        delta = self.up(self.dropout(self.act(self.down(hidden.to(dtype)))))
        return hidden + delta.to(hidden.dtype)


def _add_adapter(module, args, output):
    return module.bottleneck_adapter(output)


def adapted_projections(model, options: Options) -> list[tuple[str, nn.Module]]:
    """(name, module) of every projection that gets an adapter, in layer order."""
    layers_name, layers = decoder_layers(model)
    suffixes = MLP_OUTPUTS if options.placement == "pfeiffer" else ATTENTION_OUTPUTS + MLP_OUTPUTS
    chosen = range(len(layers)) if options.layers_to_transform is None else options.layers_to_transform
    found = []
    for index in chosen:
        if not 0 <= index < len(layers):
            raise UserError(f"config key 'method.layers_to_transform': layer {index} does not exist; the model has {len(layers)}")
        for name, module in layers[index].named_modules():
            if name.endswith(suffixes) and isinstance(module, nn.Linear):
                found.append((f"{layers_name}.{index}.{name}", module))
    expected = len(chosen) * (1 if options.placement == "pfeiffer" else 2)
    if len(found) != expected:
        raise UserError(
            f"method adapter: found {len(found)} of the {expected} attention / MLP output projections of "
            f"{type(model).__name__}; bottleneck adapters know the Llama, Qwen2, Gemma and BLOOM families"
        )
    return found


def apply(model, options: Options, tokenizer=None):
    hidden = model.config.get_text_config().hidden_size
    bottleneck = options.bottleneck_size or max(1, hidden // options.reduction_factor)
    train_only(model, lambda name: False)
    for _, projection in adapted_projections(model, options):
        device = projection.weight.device
        adapter = BottleneckAdapter(hidden, bottleneck, options.non_linearity, options.dropout, device=device)
        projection.add_module(ADAPTER_NAME, adapter)
        projection.register_forward_hook(_add_adapter)
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapters' tensors, by their names in the model."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if f".{ADAPTER_NAME}." in name}


def is_adapted(model) -> bool:
    return any(hasattr(module, ADAPTER_NAME) for module in model.modules())


def save_adapters(model, options: Options, run_dir: Path) -> int:
    """The adapters' weights (safetensors) and their options (JSON); returns the bytes of the weights."""
    save_file(adapter_state(model), run_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(options), indent=2), encoding="utf-8")
    return (run_dir / WEIGHTS_FILE).stat().st_size


def load_adapters(model, run_dir: Path):
    """The base `model` with a run's adapters in place."""
    options = Options(**json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    apply(model, options)
    state = load_file(run_dir / WEIGHTS_FILE)
    missing = set(adapter_state(model)) - set(state)
    unexpected = set(state) - set(adapter_state(model))
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        raise UserError(f"{run_dir}: the adapters do not fit the base model (e.g. {example}); was model.path changed?")
    model.load_state_dict(state, strict=False)
    return model


METHOD = Method(
    name="adapter",
    options=Options,
    apply=apply,
    trains_base=False,
    not_mergeable_reason=(
        "its adapters apply a non-linear function (down-projection, activation, up-projection), which cannot be folded "
        "into a weight; serve it with --adapter"
    ),
)
