"""Frozen linear layers multiplied by oneDNN on the CPU (`train.cpu_matmul`: `onednn`, or `auto` where it is measured
faster: calibration.py).

torch's x86 wheels multiply fp32 matrices with MKL, which on AMD CPUs runs its generic code path (MKL_VERBOSE names
"Intel(R) Architecture processors"). oneDNN, which torch also ships and which picks its kernels by instruction set,
not by vendor, often multiplies the same shapes faster there, but not on every CPU, and not always inside a training
step when it does alone: so `auto` measures which makes the run's own training pass faster (calibration.py), for
two parts of the model apart: its layers, and its LM head, whose one large product can favour oneDNN where the
layers' smaller ones do not. Only frozen fp32 `nn.Linear` layers are switched: their backward is one product,
grad @ W, with no weight gradient, so the autograd function below is all they need; the chunked loss (loss.py)
multiplies a switched LM head the same way on tcmalloc or jemalloc.
Results match torch's products to fp32 rounding (tests/speed/test_cpu_matmul.py).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..weights import base_model

PARTS = ("layers", "head")  # what `auto` chooses a library for: every frozen linear layer but the LM head; the LM head


def onednn_linear(x, weight, bias=None):
    """linear(x, weight, bias) by oneDNN, into a fresh tensor (x and weight fp32; weight may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(torch.autograd.Function):
    """linear(x, weight, bias) for a frozen weight and bias: only x gets a gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return onednn_linear(grad.contiguous(), weight.t()), None, None


def onednn_linear_forward(linear: nn.Linear, x):
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):  # oneDNN's fp32 path only; autocast casts itself
        return F.linear(x, linear.weight, linear.bias)
    return OneDnnLinear.apply(x, linear.weight, linear.bias)


def is_frozen_cpu_linear(module) -> bool:
    if type(module) is not nn.Linear:  # subclasses (bitsandbytes' quantized layers) multiply their own way
        return False
    frozen = not module.weight.requires_grad and (module.bias is None or not module.bias.requires_grad)
    return frozen and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"


def lm_head(model):
    """The model's LM head (its output embeddings), or None for a model without one."""
    output_embeddings = getattr(base_model(model), "get_output_embeddings", None)
    return output_embeddings() if output_embeddings else None


def frozen_linears(model) -> dict[str, list[nn.Linear]]:
    """`model`'s frozen fp32 CPU linear layers by part (PARTS); a part without any is left out."""
    head = lm_head(model)
    found = {}
    for module in model.modules():
        if is_frozen_cpu_linear(module):
            found.setdefault("head" if module is head else "layers", []).append(module)
    return found


def everywhere(library: str) -> dict[str, str]:
    """The same library for every part."""
    return dict.fromkeys(PARTS, library)


def recorded_matmul(recorded) -> dict[str, str]:
    """The library of each part, from a run record: runs started before the LM head was chosen apart name one."""
    return everywhere(recorded) if isinstance(recorded, str) else {part: recorded[part] for part in PARTS}


def use_onednn_matmul(model, parts=PARTS) -> int:
    """Route `model`'s frozen fp32 CPU linear layers in `parts` (of PARTS) through oneDNN, in place; returns how many
    were switched."""
    if not torch.backends.mkldnn.is_available():
        return 0
    linears = [linear for part, found in frozen_linears(model).items() if part in parts for linear in found]
    for linear in linears:
        linear.forward = partial(onednn_linear_forward, linear)
    return len(linears)


def multiply_as(model, choice: dict[str, str]) -> int:
    """Multiply each part of `model` with the library `choice` names for it ("torch" or "onednn"); returns how many
    layers oneDNN multiplies."""
    use_torch_matmul(model)
    return use_onednn_matmul(model, [part for part in PARTS if choice[part] == "onednn"])


def uses_onednn(module) -> bool:
    """Whether use_onednn_matmul switched this layer (the chunked loss then multiplies the LM head the same way)."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, partial) and forward.func is onednn_linear_forward


def use_torch_matmul(model) -> None:
    """Undo use_onednn_matmul: after training, the model multiplies as it will once saved and reloaded."""
    for module in model.modules():
        if uses_onednn(module):
            del module.forward
