"""ChatGLM's layers with the original module names and shapes: RMSNorm, the rotary embedding on the first half of
each head (interleaved pairs, base 10000 x rope_ratio), attention through the fused `query_key_value` (bias on it
only; grouped-query with `multi_query_group_num` key/value heads) and transformers' attention functions (sdpa by
default, so llm-tuning's per-sample attention on packed rows reaches it), and the SwiGLU MLP with the fused
`dense_h_to_4h`. Tensors are batch-first; the original is sequence-first, which changes no arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration import ChatGLMConfig

ROPE_BASE = 10000.0


class ChatGLMRMSNorm(nn.Module):
    """x / rms(x) x weight, the mean of squares in fp32, as the original computes it (the weight multiplies the
    fp32 product before the cast back, unlike Llama's)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (hidden_states * torch.rsqrt(variance + self.eps))).to(input_dtype)


class ChatGLMRotaryEmbedding(nn.Module):
    """cos and sin per position for the rotated half of a head. `inv_freq` is kept as the checkpoint stores it
    (the original registers it; its values never change the result, which is computed in fp32 from the config)."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.rotary_dim = config.kv_channels // 2  # the rotated part of each head
        self.base = ROPE_BASE * config.rope_ratio
        self.register_buffer("inv_freq", self.stored_inv_freq(), persistent=True)

    def stored_inv_freq(self) -> torch.Tensor:
        # the original's buffer: over half the rotated dimensions, with the base unscaled
        return 1.0 / (ROPE_BASE ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float) / self.rotary_dim))

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = hidden_states.device
        theta = 1.0 / (self.base ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float, device=device) / self.rotary_dim))
        angles = position_ids[..., None].float() * theta  # batch x sequence x rotary_dim / 2
        return angles.cos().to(hidden_states.dtype), angles.sin().to(hidden_states.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2i], x[2i + 1]) of the first 2 x len(cos) dimensions of every head of x
    (batch x heads x sequence x head_dim); the rest passes unchanged."""
    rotated = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rotated], x[..., rotated:]
    pairs = x_rot.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((out, x_pass), dim=-1)


class ChatGLMSelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        projection = self.num_heads * self.head_dim
        qkv_size = projection + 2 * self.head_dim * self.num_key_value_heads
        self.query_key_value = nn.Linear(config.hidden_size, qkv_size, bias=config.add_bias_linear or config.add_qkv_bias)
        self.dense = nn.Linear(projection, config.hidden_size, bias=config.add_bias_linear)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        batch, length = hidden_states.shape[:2]
        mixed = self.query_key_value(hidden_states)
        if self.config.multi_query_attention:
            sizes = [self.num_heads * self.head_dim] + [self.num_key_value_heads * self.head_dim] * 2
            query, key, value = (part.view(batch, length, -1, self.head_dim) for part in mixed.split(sizes, dim=-1))
        else:  # per head: its query, key and value side by side
            query, key, value = mixed.view(batch, length, self.num_heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # batch x heads x sequence x head_dim
        cos, sin = position_embeddings
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, sdpa_attention_forward)
        dropout = self.config.attention_dropout if self.training else 0.0
        output, _ = attention(self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
        return self.dense(output.reshape(batch, length, -1).contiguous())


class ChatGLMMLP(nn.Module):
    """SwiGLU: dense_4h_to_h(silu(gate) * up), gate and up the two halves of the fused dense_h_to_4h. It declares
    itself to train.lean_activations (speed/activations.py), which keeps gate and up only for backward."""

    fused_gated_layers = ("dense_h_to_4h", "dense_4h_to_h")
    gated_activation = "SiLU"

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(hidden_states).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class ChatGLMBlock(GradientCheckpointingLayer):
    """Pre-norm block: x + attention(norm(x)), then + mlp(norm(...)); dropout on each branch."""

    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.hidden_dropout = config.hidden_dropout
        self.input_layernorm = ChatGLMRMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = ChatGLMSelfAttention(config, layer_idx)
        self.post_attention_layernorm = ChatGLMRMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = ChatGLMMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attended = self.self_attention(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values, **kwargs
        )
        hidden_states = hidden_states + F.dropout(attended, p=self.hidden_dropout, training=self.training)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + F.dropout(mlp_output, p=self.hidden_dropout, training=self.training)
