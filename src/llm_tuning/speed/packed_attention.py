"""Attention on packed rows, one sample at a time (see data/packing.py): transformers' sdpa attention, plus
causal attention within each sample when the trainer passes the rows' sample lengths."""

from __future__ import annotations

from torch import cat
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from ..weights import base_model

PACKED_ATTENTION = "llm_tuning_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, packed_segments=None, **kwargs):
    """transformers' sdpa attention, except on packed rows (`packed_segments` given): there, causal attention
    within each sample, one call per sample. A block-diagonal mask would give the same result but leaves the
    kernel computing every pair in the row; per sample, it computes only each sample's own triangle."""
    if packed_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kernel = getattr(module, "packed_attention_kernel", None)  # the same in C, where train.cpu_kernels put it
    attended = kernel(query, key, value, packed_segments, scaling) if kernel and dropout == 0.0 else None
    if attended is not None:
        return attended, None
    gqa = query.shape[1] != key.shape[1]
    rows = []
    # 4-d slices (1 x heads x sample x dim): with 3-d ones torch falls back from its CPU flash kernel to the math one
    for q, k, v, lengths in zip(query.split(1), key.split(1), value.split(1), packed_segments):
        samples = zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))
        attended = [
            scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
            for qs, ks, vs in samples
        ]
        rows.append(cat(attended, dim=2))
    return cat(rows).transpose(1, 2).contiguous(), None  # batch x row x heads x dim, as sdpa_attention_forward returns


def use_packed_attention(model) -> bool:
    """Switch a model on transformers' sdpa attention to packed_sdpa (the same, plus per-sample attention on
    packed rows); True if it was switched."""
    base = base_model(model)
    if base.config._attn_implementation != "sdpa" or not base._can_set_attn_implementation():
        return False
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
    # unpacked batches: padding masks as before
    AttentionMaskInterface.register(PACKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    base.set_attn_implementation(PACKED_ATTENTION)
    return True
