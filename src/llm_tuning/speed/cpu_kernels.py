"""`train.cpu_kernels`: the work each decoder layer repeats between its matrix products, done by C kernels
(cpu_kernels.c, built for the CPU in use: cpu_kernels_build.py) in one pass over the tensors, instead of torch's chain
of ops, each a pass of its own.

What they replace, on a CPU in fp32:
- the Llama family's RMSNorm (Llama, Mistral, Qwen2/3, SmolLM ...: the forward compile.py also recognises),
  forward and backward;
- with lean activations, the gated MLP's silu(gate) * up and its backward (activations.GatedProduct);
- with lean activations, LoRA dropout's mask applied to its input, forward and backward (activations.DropoutLinear),
  bit for bit as torch applies it;
- packed rows' causal attention within each sample (packed_attention.packed_sdpa), where torch computes with one
  thread, as each part of a split step does: all samples in one call, the products through numpy's OpenBLAS and
  the softmax between them in C, instead of torch's flash kernel and a cat, one sample at a time;
- the chunked loss's softmax and cross-entropy gradient per chunk of logits (loss.LabelledCrossEntropy), in one pass
  fewer than torch's log_softmax and exp;
- and, with no C, LoRA's B layers, their backward's products formed transposed (RankInputLinear).
All but the dropout and LoRA B's forward (bit for bit torch's) equal torch's results to fp32 rounding (sums run in
another order, exp is computed in C); tests/speed/test_cpu_kernels.py holds them to it. Other dtypes, devices or
layouts go to torch's ops. Without a C compiler `auto` uses torch's ops and says so in the run summary's
`speed_choices`; `fused` refuses to start.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..resume import RUN_RECORD_FILE
from .activations import fused_gated_mlp_forward, gated_mlp_forward, lora_a_forward
from .compile import is_llama_rms_norm
from .cpu_kernels_build import blas_sgemm, c_compiler, kernels
from .cpu_matmul import lm_head, openblas_threads_as_torchs

SILU = ("SiLU", "SiLUActivation")  # activations.ACTIVATIONS' names for the one activation the kernels compute
# tokens per block of packed attention (each block's product stacks the query heads that share a key/value head): of
# 32, 64 and 96, the fastest or as fast from 128 to 384 tokens (benchmarks/results/attention_*_cpu.md); longer blocks
# make larger products but waste more of them on the masked half of each diagonal block
ATTENTION_BLOCK = 64


def fits(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: fp32 (or the masks' bytes), on the CPU, contiguous."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bool) and t.is_contiguous() for t in tensors)


def silu_product_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if not fits(gate, up) or gate.shape != up.shape:
        return F.silu(gate) * up
    out = torch.empty_like(gate)
    kernels().silu_product_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel())
    return out


def silu_product_backward(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not fits(grad, gate, up) or not grad.shape == gate.shape == up.shape:
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    kernels().silu_product_backward(
        grad.data_ptr(), gate.data_ptr(), up.data_ptr(), grad_gate.data_ptr(), grad_up.data_ptr(), gate.numel()
    )
    return grad_gate, grad_up


SILU_PRODUCT = (silu_product_forward, silu_product_backward)  # GatedProduct's `kernels`


class RMSNorm(torch.autograd.Function):
    """LlamaRMSNorm's forward and backward in one pass each, keeping x and one float per row for backward."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        cols = x.shape[-1]
        out, inv_rms = torch.empty_like(x), x.new_empty(x.shape[:-1])
        kernels().rms_norm_forward(
            x.data_ptr(), weight.data_ptr(), out.data_ptr(), inv_rms.data_ptr(), x.numel() // cols, cols, eps
        )
        ctx.save_for_backward(x, weight, inv_rms)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, inv_rms = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        cols = x.shape[-1]
        kernels().rms_norm_backward(
            grad.data_ptr(),
            x.data_ptr(),
            weight.data_ptr(),
            inv_rms.data_ptr(),
            grad_x.data_ptr(),
            grad_weight.data_ptr() if grad_weight is not None else None,
            x.numel() // cols,
            cols,
        )
        return grad_x, grad_weight, None


def rms_norm_forward(norm, hidden: torch.Tensor) -> torch.Tensor:
    if not fits(hidden, norm.weight):
        return type(norm).forward(norm, hidden)
    return RMSNorm.apply(hidden, norm.weight, norm.variance_epsilon)


def dropout_apply(x: torch.Tensor, kept: torch.Tensor, p: float) -> torch.Tensor:
    """x * kept.to(x.dtype).div_(1 - p), as DropoutLinear applies its mask, in one pass."""
    if not fits(x, kept) or x.shape != kept.shape:
        return x * kept.to(x.dtype).div_(1 - p)
    out = torch.empty_like(x)
    kernels().dropout_apply(x.data_ptr(), kept.data_ptr(), 1 - p, out.data_ptr(), x.numel())
    return out


class PackedAttention(torch.autograd.Function):
    """Causal attention within each sample of packed rows, as packed_attention.packed_sdpa computes it with torch's
    flash kernel one sample at a time, here all samples in one call, single-threaded. Takes transformers' query, key
    and value (rows x heads x tokens x dim, over rows x tokens x heads x dim memory) and the (row, start, length)
    of every sample (int64, flat); returns rows x tokens x heads x dim, as packed_sdpa does."""

    @staticmethod
    def forward(ctx, query, key, value, samples, scale: float):
        q, k, v = (t.transpose(1, 2).contiguous() for t in (query, key, value))  # no copy in transformers' layout
        rows, tokens, heads, dim = q.shape
        out, lse = torch.empty_like(q), q.new_empty(rows, heads, tokens)
        shape = (len(samples) // 3, tokens, heads, k.shape[2], dim, ATTENTION_BLOCK, scale)
        pointers = (q, k, v, out, lse, samples)
        if kernels().packed_attention_forward(*(t.data_ptr() for t in pointers), *shape):
            raise MemoryError("packed attention: no memory for the scores of one block")
        ctx.save_for_backward(q, k, v, out, lse, samples)
        ctx.shape = shape
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, samples = ctx.saved_tensors
        grad = grad.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        pointers = (q, k, v, out, lse, grad, grad_q, grad_k, grad_v, samples)
        if kernels().packed_attention_backward(*(t.data_ptr() for t in pointers), *ctx.shape):
            raise MemoryError("packed attention: no memory for the scores of one block")
        return grad_q.transpose(1, 2), grad_k.transpose(1, 2), grad_v.transpose(1, 2), None, None


def packed_attention(query, key, value, segments: list[list[int]], scale: float | None):
    """PackedAttention on transformers' query, key and value and each row's sample lengths; None where it does not
    apply (torch computes with more than one thread, which its flash kernel uses; not fp32; lengths that do not fill
    the rows; heads of different sizes), and packed_sdpa computes as before."""
    tokens = query.shape[2]
    if torch.get_num_threads() != 1 or not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (query, key, value)):
        return None
    if any(sum(lengths) != tokens for lengths in segments) or query.shape[1] % key.shape[1]:
        return None
    if not query.shape[-1] == key.shape[-1] == value.shape[-1]:
        return None
    samples = [(row, sum(lengths[:i]), length) for row, lengths in enumerate(segments) for i, length in enumerate(lengths)]
    flat = torch.tensor(samples, dtype=torch.int64).flatten()
    return PackedAttention.apply(query, key, value, flat, query.shape[-1] ** -0.5 if scale is None else scale)


def cross_entropy_gradient(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """In place, softmax(logits) less one at each row's target: the gradient of the summed cross-entropy with respect
    to the logits (rows x vocabulary, fp32, contiguous; targets int64); returns that sum."""
    targets = targets.to(torch.int64).contiguous()
    return kernels().cross_entropy_gradient(logits.data_ptr(), targets.data_ptr(), *logits.shape)


class RankInputLinear(torch.autograd.Function):
    """linear(x, weight) for LoRA's B, whose inputs have the adapter's rank r. Its backward's two products, grad @ weight
    and grad^T @ x, have r columns, and torch's CPU BLAS (MKL) forms such tall, narrow products several times slower
    than their transposes, (weight^T @ grad^T)^T and (x^T @ grad)^T, which are formed instead
    (benchmarks/results/lora_products_*.md). The forward is torch's own: the loss does not change."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = weight.t().mm(rows.t()).t().reshape(x.shape) if ctx.needs_input_grad[0] else None
        grad_weight = x.reshape(-1, x.shape[-1]).t().mm(rows).t() if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def lora_b_forward(lora_b: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not (lora_b.training and fits(x, lora_b.weight)):
        return F.linear(x, lora_b.weight)
    return RankInputLinear.apply(x, lora_b.weight)


def plain_lora_bs(model) -> list[nn.Linear]:
    """`model`'s LoRA B layers (peft's), but those of DoRA and other variants, which use them their own way."""
    return [
        lora_b
        for module in model.modules()
        for name, lora_b in getattr(module, "lora_B", {}).items()
        if name not in getattr(module, "lora_variant", {}) and type(lora_b) is nn.Linear and lora_b.bias is None
    ]


def is_attention(module) -> bool:
    """A transformers attention module, which calls its model's attention function (packed_sdpa when packed)."""
    return hasattr(module, "num_key_value_groups") and hasattr(module, "head_dim")


def use_cpu_kernels(model) -> list[str]:
    """Route `model`'s Llama-form RMSNorms, lean SiLU gated products, lean LoRA dropouts, LoRA B layers, attentions
    (when packed) and the chunked loss's softmax through the kernels, in place; says what was routed. Builds the
    kernels first, so a failure rewrites nothing."""
    kernels()
    norms = [m for m in model.modules() if is_llama_rms_norm(m)]
    for norm in norms:
        norm.forward = partial(rms_norm_forward, norm)
    products = dropouts = 0
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, partial) and forward.func is gated_mlp_forward and forward.args[1] in SILU:
            module.forward = partial(gated_mlp_forward, module, forward.args[1], kernels=SILU_PRODUCT)
            products += 1
        elif isinstance(forward, partial) and forward.func is fused_gated_mlp_forward and module.gated_activation in SILU:
            module.forward = partial(fused_gated_mlp_forward, module, kernels=SILU_PRODUCT)
            products += 1
        elif isinstance(forward, partial) and forward.func is lora_a_forward:
            module.forward = partial(lora_a_forward, *forward.args, apply_mask=dropout_apply)
            dropouts += 1
    head = lm_head(model)
    lm_heads = [head] if type(head) is nn.Linear else []
    for head in lm_heads:
        head.cross_entropy_kernel = cross_entropy_gradient  # loss.labelled_loss looks for it
    lora_bs = plain_lora_bs(model)
    for lora_b in lora_bs:
        lora_b.forward = partial(lora_b_forward, lora_b)
    attentions = [m for m in model.modules() if is_attention(m)] if blas_sgemm() else []
    for attention in attentions:
        attention.packed_attention_kernel = packed_attention  # packed_sdpa looks for it
    if attentions:
        openblas_threads_as_torchs()
    counts = [(len(norms), "RMSNorms"), (products, "gated products"), (dropouts, "LoRA dropouts")]
    counts += [(len(lora_bs), "LoRA B layers"), (len(attentions), "packed attentions"), (len(lm_heads), "loss softmax")]
    return [f"{count} {what}" for count, what in counts if count]


def use_torch_ops(model) -> None:
    """Undo use_cpu_kernels: `model` computes with torch's ops again, as it will once saved and reloaded."""
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, partial) and forward.func in (rms_norm_forward, lora_b_forward):
            del module.forward
        elif isinstance(forward, partial) and (
            forward.keywords.get("kernels") is SILU_PRODUCT or "apply_mask" in forward.keywords
        ):
            module.forward = partial(forward.func, *forward.args)
        module.__dict__.pop("packed_attention_kernel", None)
        module.__dict__.pop("cross_entropy_kernel", None)


def cpu_kernels_choice(choice: str, on_cpu: bool, fp32: bool, compiled: bool, recorded: str | None = None) -> dict:
    """Whether this run uses the kernels (`chosen`: `fused` or `torch`) and why, from `train.cpu_kernels`: `auto` uses
    them where they apply, `fused` refuses to start where they do not. A resumed run passes what it `recorded` at its
    start, and computes as it started or not at all."""
    source = f"as when the run started ({RUN_RECORD_FILE})" if recorded else f"train.cpu_kernels={choice}"
    choice = recorded or choice
    if choice == "torch":
        return {"chosen": "torch", "why": source}
    reasons = [
        (not on_cpu, "the model is not on a CPU"),
        (not fp32, "the model does not compute in fp32"),
        (compiled, "train.compile compiles the same work"),
        (c_compiler() is None, "no C compiler was found (CC, or cc, gcc, clang on PATH)"),
    ]
    reason = next((why for applies, why in reasons if applies), None)
    if reason is None:
        try:
            kernels()  # built now, so that a compiler that fails stops nothing half-way
            return {"chosen": "fused", "why": source}
        except UserError as error:
            if choice == "fused":
                raise
            reason = f"the kernels could not be built ({error})"
    if recorded:
        raise UserError(
            f"this run started with the fused CPU kernels ({RUN_RECORD_FILE}) and resumes only with them, but {reason}"
        )
    if choice == "fused":
        raise UserError(f"config key 'train.cpu_kernels': the fused kernels cannot run here: {reason}; set it to auto or torch")
    return {"chosen": "torch", "why": reason}
