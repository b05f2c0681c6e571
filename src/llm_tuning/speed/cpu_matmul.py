"""Frozen linear layers multiplied by another library than torch's own on the CPU (`train.cpu_matmul`: `onednn`,
`openblas`, or `auto`: the one measured fastest, calibration.py).

torch's x86 wheels multiply fp32 matrices with MKL, which on AMD CPUs runs its generic code path (MKL_VERBOSE names
"Intel(R) Architecture processors"). oneDNN, which torch also ships, and OpenBLAS, which numpy ships, pick their
kernels by instruction set, not by vendor, and often multiply the same shapes faster there, but not on every CPU,
and not always inside a training step when they do alone: so `auto` measures which makes the run's own training
pass faster (calibration.py), for two parts of the model apart: its layers, and its LM head, whose one large product
can favour another library than the layers' smaller ones. OpenBLAS keeps a thread pool of its own, which fights
torch's threads for the cores: it is offered only where each process computes with one thread (the step split over
the cores, split_step.py), and `threads` below limits both.
Only frozen fp32 `nn.Linear` layers are switched: their backward is one product, grad @ W, with no weight gradient,
so the autograd function below is all they need; the chunked loss (loss.py) multiplies a switched LM head the same
way. Results match torch's products to fp32 rounding (tests/speed/test_cpu_matmul.py).
"""

from __future__ import annotations

import platform
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn
from torch.nn import functional as F

from ..weights import base_model

PARTS = ("layers", "head")  # what `auto` chooses a library for: every frozen linear layer but the LM head; the LM head
LIBRARIES = ("torch", "onednn", "openblas")


def onednn_linear(x, weight, bias=None):
    """linear(x, weight, bias) by oneDNN, into a fresh tensor (x and weight fp32; weight may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def openblas_linear(x, weight, bias=None, out=None):
    """linear(x, weight, bias) by numpy's BLAS (OpenBLAS in numpy's wheels), into `out` or a fresh tensor (x and
    weight fp32 on the CPU; weight may be a transposed view)."""
    rows = x.detach().reshape(-1, x.shape[-1])
    if out is None:
        out = torch.empty(rows.shape[0], weight.shape[0], dtype=x.dtype)
    np.matmul(rows.contiguous().numpy(), weight.detach().numpy().T, out=out.numpy())
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


PRODUCTS = {"onednn": onednn_linear, "openblas": openblas_linear}
CHECKED_ROWS = 2048  # of a weight, for product_error: enough for every kernel's blocking, cheap even for an LM head


def product_error(library: str, weight: torch.Tensor) -> float:
    """The largest error of `library`'s two products with `weight` in training (the forward x @ W.T and, on a
    transposed view as the backward passes it, g @ W), on random rows and the weight's first CHECKED_ROWS rows,
    relative to the largest magnitude of the exact (float64) product; infinite where a result is not finite or the
    library fails. Some BLAS builds miscompute on CPUs newer than they know (which is why some machines set
    OPENBLAS_CORETYPE): a fast library that is wrong must never be chosen."""
    generator = torch.Generator().manual_seed(0)  # a generator of its own: training's random state is not drawn from
    sample = weight.detach()[:CHECKED_ROWS]
    worst = 0.0
    for operand in (sample, sample.t()):
        x = torch.randn(33, operand.shape[1], generator=generator)  # an odd row count: the kernels' edge cases too
        exact = x.double() @ operand.double().t()
        try:
            got = PRODUCTS[library](x, operand).double()
        except Exception:  # noqa: BLE001 - a library that cannot multiply here is as unusable as a wrong one
            return float("inf")
        if not torch.isfinite(got).all():
            return float("inf")
        worst = max(worst, ((got - exact).abs().max() / exact.abs().max().clamp_min(1e-30)).item())
    return worst


class FrozenLinear(torch.autograd.Function):
    """linear(x, weight, bias) by `library` for a frozen weight and bias: only x gets a gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, library: str):
        ctx.save_for_backward(weight)
        ctx.library = library
        return PRODUCTS[library](x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return PRODUCTS[ctx.library](grad.contiguous(), weight.t()), None, None, None


def switched_linear_forward(linear: nn.Linear, library: str, x):
    if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):  # their fp32 paths only; autocast casts itself
        return F.linear(x, linear.weight, linear.bias)
    return FrozenLinear.apply(x, linear.weight, linear.bias, library)


def offered_libraries() -> tuple[str, ...]:
    """The libraries `auto` may choose here: torch's always; oneDNN where torch ships it and the CPU is x86; OpenBLAS
    where numpy multiplies with it."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    onednn = ("onednn",) if x86 and torch.backends.mkldnn.is_available() else ()
    return ("torch", *onednn, *(("openblas",) if numpy_uses_openblas() else ()))


def numpy_uses_openblas() -> bool:
    return any(library["internal_api"] == "openblas" for library in threadpool_info() if library["user_api"] == "blas")


def openblas_threads_as_torchs() -> None:
    """OpenBLAS computes with as many threads as torch from now on: its own default, one per core, would fight
    torch's threads for the cores."""
    threadpool_limits(limits=torch.get_num_threads(), user_api="blas")


@contextmanager
def threads(count: int):
    """torch, and OpenBLAS beside it, compute with `count` threads inside."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


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


def multiply_as(model, choice: dict[str, str]) -> int:
    """Multiply each part of `model`'s frozen fp32 CPU linear layers with the library `choice` names for it (of
    LIBRARIES; oneDNN only where torch ships it); returns how many layers left torch's products. OpenBLAS computes
    with as many threads as torch from then on (its own default, one per core, would fight torch's)."""
    use_torch_matmul(model)
    if "openblas" in choice.values():
        openblas_threads_as_torchs()
    switched = 0
    for part, linears in frozen_linears(model).items():
        library = choice[part]
        if library == "torch" or (library == "onednn" and not torch.backends.mkldnn.is_available()):
            continue
        for linear in linears:
            linear.forward = partial(switched_linear_forward, linear, library)
        switched += len(linears)
    return switched


def library_of(module) -> str:
    """Which library multiplies this layer: the one multiply_as switched it to (the chunked loss then multiplies the LM
    head the same way), else "torch"."""
    forward = module.__dict__.get("forward")
    return forward.args[1] if isinstance(forward, partial) and forward.func is switched_linear_forward else "torch"


def use_torch_matmul(model) -> None:
    """Undo multiply_as: after training, the model multiplies as it will once saved and reloaded."""
    for module in model.modules():
        if library_of(module) != "torch":
            del module.forward
