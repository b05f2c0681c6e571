"""Frozen linear layers multiplied by oneDNN on the CPU (`train.cpu_matmul=onednn`, off by default).

torch's x86 wheels multiply fp32 matrices with MKL, which on AMD CPUs runs its generic code path (MKL_VERBOSE names
"Intel(R) Architecture processors"). oneDNN, which torch also ships and which picks its kernels by instruction set,
not by vendor, multiplies the same shapes faster there (`python benchmarks/cpu_matmul.py`). Only frozen fp32
`nn.Linear` layers are switched: their backward is one product, grad @ W, with no weight gradient, so the
autograd function below is all they need. Results match torch's products to fp32 rounding (tests/test_cpu_matmul.py).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F


def _onednn_linear(x, weight, bias):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(torch.autograd.Function):
    """linear(x, weight, bias) for a frozen weight and bias: only x gets a gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return _onednn_linear(grad.contiguous(), weight.t(), None), None, None


def onednn_linear_forward(linear: nn.Linear, x):
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):  # oneDNN's fp32 path only; autocast casts itself
        return F.linear(x, linear.weight, linear.bias)
    return OneDnnLinear.apply(x, linear.weight, linear.bias)


def is_frozen_cpu_linear(module) -> bool:
    if type(module) is not nn.Linear:  # subclasses (bitsandbytes' quantized layers) multiply their own way
        return False
    frozen = not module.weight.requires_grad and (module.bias is None or not module.bias.requires_grad)
    return frozen and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"


def use_onednn_matmul(model) -> int:
    """Route `model`'s frozen fp32 CPU linear layers through oneDNN, in place; returns how many were switched."""
    if not torch.backends.mkldnn.is_available():
        return 0
    linears = [m for m in model.modules() if is_frozen_cpu_linear(m)]
    for linear in linears:
        linear.forward = partial(onednn_linear_forward, linear)
    return len(linears)
