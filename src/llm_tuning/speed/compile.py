"""`train.compile`: the elementwise work around the matrix products, compiled by torch.compile (inductor; on a CPU
its C++ backend, which needs a C++ compiler).

What is compiled: the RMSNorms with the Llama family's forward (Llama, Mistral, Qwen2/3, SmolLM ... share it) and,
with lean activations, the gated MLP's act(gate) * up and its backward (activations.GatedProduct). Each is a free
function of tensors, compiled once and shared by every layer, whose shapes are the same. The layers themselves are
not compiled: their products stay with the library `train.cpu_matmul` chose (inductor cannot lower oneDNN's linear
when the weight is not a constant), and packed attention takes each row's sample lengths as Python lists, which
would recompile a layer for every packing. A change of sequence length recompiles once, with that length dynamic
(torch.compile's automatic dynamic shapes), so the number of compilations stays bounded.
Results equal eager ones to fp32 rounding (tests/speed/test_compile.py). The compilation is paid in the first
steps; what it gives later, and whether it pays, is in docs/speed.md.
"""

from __future__ import annotations

import os
import shutil
from functools import cache, partial

import torch

from ..errors import UserError
from .activations import ACTIVATIONS, forward_source, fused_gated_mlp_forward, gated_mlp_forward

# the lines of transformers' LlamaRMSNorm.forward that rms_norm below computes
RMS_NORM_LINES = (
    "variance = hidden_states.pow(2).mean(-1, keepdim=True)",
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)",
    "return self.weight * hidden_states.to(input_dtype)",
)


def rms_norm(hidden, weight, eps: float):
    """LlamaRMSNorm's forward, op for op."""
    input_dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(input_dtype)


@cache
def compiled_rms_norm():
    return torch.compile(rms_norm)


def rms_norm_forward(norm, hidden):
    return compiled_rms_norm()(hidden, norm.weight, norm.variance_epsilon)


@cache
def gated_product_kernels(activation: str):
    """(forward, backward) of act(gate) * up, each compiled into one pass over the tensors."""
    act, act_backward = ACTIVATIONS[activation]

    def forward(gate, up):
        return act(gate) * up

    def backward(grad, gate, up):
        return act_backward(grad * up, gate), grad * act(gate)

    return torch.compile(forward), torch.compile(backward)


def compile_elementwise(model) -> list[str]:
    """Route `model`'s Llama-form RMSNorms and lean gated products through compiled kernels, in place; says what
    was compiled."""
    if next(model.parameters()).device.type == "cpu":
        require_cpp_compiler()
    norms = [m for m in model.modules() if is_llama_rms_norm(m)]
    for norm in norms:
        norm.forward = partial(rms_norm_forward, norm)
    products = 0
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, partial) and forward.func is gated_mlp_forward:
            activation = forward.args[1]
            module.forward = partial(gated_mlp_forward, module, activation, kernels=gated_product_kernels(activation))
            products += 1
        elif isinstance(forward, partial) and forward.func is fused_gated_mlp_forward:
            module.forward = partial(fused_gated_mlp_forward, module, kernels=gated_product_kernels(module.gated_activation))
            products += 1
    done = [f"{len(norms)} RMSNorms"] if norms else []
    return done + ([f"{products} gated products"] if products else [])


def is_llama_rms_norm(module) -> bool:
    if not hasattr(module, "variance_epsilon") or "forward" in module.__dict__:
        return False
    source = forward_source(type(module))
    return all(line in source for line in RMS_NORM_LINES)


def require_cpp_compiler() -> None:
    """inductor's CPU backend writes C++ and builds it with $CXX or g++: say so before training, not mid-step."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise UserError(
            f"config key 'train.compile': torch.compile on a CPU needs a C++ compiler, and {compiler!r} is not on PATH "
            "(Debian: apt-get install g++; or set CXX), or set train.compile=false"
        )
