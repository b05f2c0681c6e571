"""The training loss computed only where it counts: the LM head and cross-entropy run on the positions that
have a label (prompt positions are -100), a chunk at a time, and the gradients are formed in the same pass,
so batch x sequence x vocabulary fp32 logits never exist and nothing of size vocabulary is kept for backward.

Same loss and gradients as transformers' ForCausalLMLoss (sum over labelled positions / num_items_in_batch,
or the mean when no count is given): tests/training/test_loss.py checks both within 1e-5.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.encode import IGNORE_INDEX
from ..speed.allocator import active_allocator
from ..speed.cpu_matmul import library_of, onednn_linear, openblas_linear
from ..weights import base_model


class LabelledCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `head(hidden)` against `targets`, summed and multiplied by `scale`; computes the
    gradients for hidden, weight and bias in the forward pass, chunk by chunk, and keeps only those (N x hidden,
    plus the head's own size when the head trains)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale: float, chunk_size: int, library: str = "torch", softmax=None):
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if not hidden.dtype == weight.dtype == torch.float32:
            library = "torch"  # the others' fp32 paths only
        onednn = library == "onednn"
        # one chunk x vocabulary buffer, reused: the logits, then in place their log-softmax, then the gradient.
        # A fresh allocation per chunk costs page faults (a large block comes from mmap) and a second copy at peak.
        # oneDNN writes only fresh tensors: each chunk's is freed before the next is made, and malloc reuses it
        buffer = (
            None
            if onednn
            else torch.empty((min(chunk_size, hidden.shape[0]), weight.shape[0]), dtype=torch.float32, device=hidden.device)
        )
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = targets[start : start + chunk_size]
            if onednn:
                grad_logits = onednn_linear(h, weight, bias)
            else:
                grad_logits = buffer[: len(y)]
                if library == "openblas":
                    openblas_linear(h, weight, bias, out=grad_logits)
                elif h.dtype == weight.dtype == torch.float32:
                    torch.mm(h, weight.t(), out=grad_logits)
                    if bias is not None:
                        grad_logits += bias
                else:
                    grad_logits.copy_(nn.functional.linear(h.to(weight.dtype), weight, bias))
            # the scale goes on the small products below, not on chunk x vocabulary values. On a CPU the logits are
            # fp32 and contiguous, whichever library multiplied, as the C kernel (speed/cpu_kernels.py) needs
            on_cpu = grad_logits.device.type == "cpu"
            total += (softmax if softmax and on_cpu else cross_entropy_gradient)(grad_logits, y)
            grad_logits = grad_logits.to(weight.dtype)
            if library == "openblas":
                openblas_linear(grad_logits, weight.t(), out=grad_hidden[start : start + chunk_size]).mul_(scale)
            else:
                grad_hidden[start : start + chunk_size] = (
                    onednn_linear(grad_logits, weight.t()) if onednn else grad_logits @ weight
                ).mul_(scale)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t().float(), h.float(), alpha=scale)
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0) * scale
            del grad_logits  # before the next chunk's logits exist: one chunk x vocabulary block at a time
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype),
            None if grad_bias is None else (grad_bias * grad_output).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
            None,
        )


def cross_entropy_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """In place, softmax(logits) less one at each row's target: d(loss)/d(logits), from the log-softmax; returns the
    summed cross-entropy. With torch's ops; speed/cpu_kernels.py computes the same in C."""
    if logits.device.type == "cpu":  # in place: the CPU kernel reads a row before writing it
        torch._log_softmax(logits, -1, False, out=logits)
    else:
        logits.copy_(torch.log_softmax(logits, dim=-1))
    total = -logits.gather(1, targets[:, None]).squeeze(-1).sum()
    logits.exp_()
    logits[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    return total


def labelled_loss(hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor, num_items_in_batch=None, chunk_size: int = 1024):
    """Causal LM loss from the decoder's last hidden states: position t predicts labels[t + 1]."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    selected, selected_targets = hidden[:, :-1][keep], targets[keep]
    count = int(keep.sum()) if num_items_in_batch is None else int(num_items_in_batch)
    if selected.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected: a batch with no labels trains nothing
    if not torch.is_grad_enabled():  # evaluation: the loss alone, a chunk at a time
        total = sum(
            nn.functional.cross_entropy(
                head(selected[i : i + chunk_size]).float(), selected_targets[i : i + chunk_size], reduction="sum"
            )
            for i in range(0, selected.shape[0], chunk_size)
        )
        return total / max(count, 1)
    # the head multiplies as the model's other frozen layers do (train.cpu_matmul), with the library it was switched
    # to, unless that is oneDNN and each chunk's fresh logits would cost more than oneDNN gains
    library = library_of(head)
    library = library if head_follows_cpu_matmul(chunk_size, library) else "torch"
    softmax = getattr(head, "cross_entropy_kernel", None)  # set by speed/cpu_kernels.py where it computes
    return LabelledCrossEntropy.apply(
        selected, head.weight, head.bias, selected_targets, 1.0 / max(count, 1), chunk_size, library, softmax
    )


def head_follows_cpu_matmul(chunk_size: int, library: str) -> bool:
    """Whether training multiplies the LM head with `library` where train.cpu_matmul chose it: always through the
    model's own loss (`chunk_size` 0); in the chunked loss, oneDNN (which writes only fresh tensors) where malloc
    reuses large blocks, the others (which write into one reused buffer) always."""
    return not chunk_size or library != "onednn" or malloc_reuses_large_blocks()


def malloc_reuses_large_blocks() -> bool:
    """Whether a fresh chunk x vocabulary tensor per chunk is cheap: on tcmalloc or jemalloc it reuses the last
    chunk's memory. glibc's malloc returns such blocks to the kernel or, with huge pages, fragments: there oneDNN's
    fresh logits cost peak RSS and gained no time (docs/speed.md)."""
    return active_allocator() in ("tcmalloc", "jemalloc")


def chunked_loss_unsupported_reason(model) -> str | None:
    """Why the decoder cannot be called directly with our loss on top, or None if it can."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning methods run through peft's own forward"
    causal_lm = base_model(model)
    head = causal_lm.get_output_embeddings()
    if type(head) is not nn.Linear:
        return f"the LM head is a {type(head).__name__} (adapted or replaced), not a plain linear layer"
    config = causal_lm.config.get_text_config()
    for scaling in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(config, scaling, None) not in (None, 1, 1.0):
            return f"the model rescales its logits ({scaling})"
    return None
