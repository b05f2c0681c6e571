"""Fewer activations kept for backward, same results (`train.lean_activations`).

Autograd keeps whatever each op needs for its own gradient, so two common patterns keep more than the layer needs:
- a gated MLP, down(act(gate(x)) * up(x)), keeps gate, act(gate) and up (3 x intermediate values per token);
  so does a fused one (ChatGLM's: gate and up the halves of one projection).
  `GatedProduct` keeps gate and up and recomputes act(gate) in backward: one elementwise op for a third less.
- LoRA's dropout, lora_A(dropout(x)), keeps a full-size float mask and the dropped-out input, per adapted
  projection. `DropoutLinear` keeps x (the same tensor for q, k and v, or gate and up, so once) and a 1-byte
  mask, and rebuilds the dropped-out input for lora_A's gradient.
Both compute with the same ops, the same random draws and the same order as the modules they replace, so losses and
gradients match the plain path (tests/speed/test_activations.py), while peak memory falls (docs/speed.md).
The one exception is asked for (`train.dropout_masks=fast`): on a CPU, the masks drawn faster than torch draws them.
"""

from __future__ import annotations

import inspect
from functools import cache, partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# the one gated-MLP forward this module rewrites (Llama, Mistral, Qwen2/3, Gemma 1-3, OLMo 2 ... share it)
GATED_MLP_SOURCE = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _gelu_tanh_backward(grad, x):
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


# activation module type -> (forward, backward(grad, input)) with the ops autograd itself would use
ACTIVATIONS = {
    "SiLU": (F.silu, torch.ops.aten.silu_backward),
    "SiLUActivation": (F.silu, torch.ops.aten.silu_backward),
    "GELUTanh": (_gelu_tanh, _gelu_tanh_backward),
}


class GatedProduct(torch.autograd.Function):
    """act(gate) * up, keeping only gate and up for backward. `kernels`, when given, computes the same in fewer
    passes: (forward(gate, up), backward(grad, gate, up) -> (grad_gate, grad_up)), compiled (speed/compile.py)."""

    @staticmethod
    def forward(ctx, gate, up, activation: str, kernels=None):
        ctx.save_for_backward(gate, up)
        ctx.activation, ctx.kernels = activation, kernels
        return kernels[0](gate, up) if kernels else ACTIVATIONS[activation][0](gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        if ctx.kernels:
            return *ctx.kernels[1](grad, gate, up), None, None
        act, act_backward = ACTIVATIONS[ctx.activation]
        grad_gate = act_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * act(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up, None, None


def kept_by_dropout(x: torch.Tensor, p: float, fast: bool) -> torch.Tensor:
    """Which elements of x dropout keeps (bool, x's shape). As torch's dropout draws them (bernoulli_(1 - p)), straight
    into bytes: bernoulli_ draws the same numbers whatever the tensor's dtype. Or, `fast` and on a CPU, where torch
    draws one element at a time: 32-bit numbers from numpy's PCG64, a word per element, kept at or above p * 2**32;
    seeded by one draw from torch's generator, so torch's seed and saved state still decide every mask."""
    if not fast or x.device.type != "cpu":
        return torch.empty_like(x, dtype=torch.bool).bernoulli_(1 - p)
    seed = int(torch.randint(2**63 - 1, (1,)))
    words = np.random.PCG64(seed).random_raw((x.numel() + 1) // 2).view(np.uint32)[: x.numel()]
    return torch.from_numpy(words >= np.uint32(min(round(p * 2**32), 2**32 - 1))).view(x.shape)


class DropoutLinear(torch.autograd.Function):
    """linear(dropout(x, p), weight), keeping x and a 1-byte mask for backward. The mask is applied as torch's
    dropout applies it (as a float, divided by 1 - p), or by `apply_mask`, which computes the same."""

    @staticmethod
    def forward(ctx, x, weight, p: float, fast_masks: bool = False, apply_mask=None):
        kept = kept_by_dropout(x, p, fast_masks)
        ctx.save_for_backward(x, kept, weight)
        ctx.p, ctx.apply_mask = p, apply_mask
        return F.linear(apply_mask(x, kept, p) if apply_mask else x * kept.to(x.dtype).div_(1 - p), weight)

    @staticmethod
    def backward(ctx, grad):
        x, kept, weight = ctx.saved_tensors
        if ctx.apply_mask:
            apply = partial(ctx.apply_mask, kept=kept, p=ctx.p)
        else:
            noise = kept.to(x.dtype).div_(1 - ctx.p)  # the forward's values exactly: 0 or 1 / (1 - p)
            apply = noise.mul
        # under autocast the forward ran in half precision: the casts meet grad's dtype (no-ops in plain fp32)
        grad_x = apply((grad @ weight.to(grad.dtype)).to(x.dtype)) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            dropped = apply(x).reshape(-1, x.shape[-1]).to(grad.dtype)
            grad_weight = grad.reshape(-1, grad.shape[-1]).t().mm(dropped).to(weight.dtype)
        return grad_x, grad_weight, None, None, None


def gated_mlp_forward(mlp, activation: str, x, kernels=None):
    return mlp.down_proj(GatedProduct.apply(mlp.gate_proj(x), mlp.up_proj(x), activation, kernels))


def fused_gated_mlp_forward(mlp, x, kernels=None):
    """The same for a gated MLP whose gate and up come from one projection (ChatGLM's dense_h_to_4h), split in halves."""
    fused, down = (getattr(mlp, name) for name in mlp.fused_gated_layers)
    gate, up = fused(x).chunk(2, dim=-1)
    return down(GatedProduct.apply(gate, up, mlp.gated_activation, kernels))


def is_fused_gated_mlp(module) -> bool:
    """A gated MLP with gate and up fused in one projection that declares itself: `fused_gated_layers` names its
    (fused, down) projections, `gated_activation` its activation (one of ACTIVATIONS); its forward computes
    down(act(gate) * up) with gate, up the halves of the fused output."""
    return getattr(module, "fused_gated_layers", None) is not None and getattr(module, "gated_activation", None) in ACTIVATIONS


def lora_a_forward(lora_a: nn.Linear, p: float, fast_masks: bool, x, apply_mask=None):
    """`apply_mask(x, kept, p)`, when given, computes x * kept.to(x.dtype).div_(1 - p) (speed/cpu_kernels.py)."""
    if lora_a.training:
        return DropoutLinear.apply(x, lora_a.weight, p, fast_masks, apply_mask)
    return F.linear(x, lora_a.weight)


def keep_fewer_activations(model, dropout_masks: str = "torch") -> list[str]:
    """Rewrite, in place, the gated MLPs and LoRA dropouts of `model` as above; says what it rewrote.
    `dropout_masks` is `train.dropout_masks`: "torch" draws torch's own masks, "fast" draws faster ones on a CPU."""
    mlps = [m for m in model.modules() if is_gated_mlp(m)]
    for mlp in mlps:
        if is_fused_gated_mlp(mlp):
            mlp.forward = partial(fused_gated_mlp_forward, mlp)
        else:
            mlp.forward = partial(gated_mlp_forward, mlp, type(mlp.act_fn).__name__)
    dropouts = 0
    for module in model.modules():
        for name, dropout in list(getattr(module, "lora_dropout", {}).items()):
            lora_a = module.lora_A[name]
            plain = name not in getattr(module, "lora_variant", {})  # DoRA and other variants use x differently
            if plain and type(dropout) is nn.Dropout and 0 < dropout.p < 1 and type(lora_a) is nn.Linear and lora_a.bias is None:
                module.lora_dropout[name] = nn.Identity()
                lora_a.forward = partial(lora_a_forward, lora_a, dropout.p, dropout_masks == "fast")
                dropouts += 1
    done = [f"{len(mlps)} gated MLPs keep gate and up only"] if mlps else []
    drawn = ", drawn fast on a CPU" if dropout_masks == "fast" else ""
    return done + ([f"{dropouts} LoRA dropouts keep a 1-byte mask{drawn}"] if dropouts else [])


@cache
def forward_source(cls: type) -> str:
    """The source of a module class's forward ("" where Python cannot show it), read once per class."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def is_gated_mlp(module) -> bool:
    """Whether `module` is a gated MLP with the forward GatedProduct rewrites, and an activation it knows."""
    if is_fused_gated_mlp(module):
        return True
    if not all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    return (
        GATED_MLP_SOURCE in forward_source(type(module))
        and type(module.act_fn).__name__ in ACTIVATIONS
        and _plain_gelu(module.act_fn)
    )


def _plain_gelu(act_fn) -> bool:
    """GELUTanh can be built with a Python formula instead of torch's kernel; only the kernel one is rewritten."""
    inner = getattr(act_fn, "act", None)
    return inner is None or isinstance(inner, partial)
