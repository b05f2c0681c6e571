"""ChatGLM's config.json as THUDM wrote it (num_layers, padded_vocab_size, ffn_hidden_size, kv_channels,
multi_query_group_num, rope_ratio ...), same keys and same defaults as the original configuration class, so that a
config saved here loads with the original code too; the standard names (num_hidden_layers, num_key_value_heads ...)
read the same values for transformers, peft and llm-tuning."""

from __future__ import annotations

from transformers import PretrainedConfig

from ...errors import UserError

MODEL_TYPE = "chatglm"


class ChatGLMConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "vocab_size": "padded_vocab_size",
        "intermediate_size": "ffn_hidden_size",
        "rms_norm_eps": "layernorm_epsilon",
        "max_position_embeddings": "seq_length",
    }

    # the original class's keys and defaults (ChatGLM3-6B's shape, multi_query_attention off)
    num_layers: int = 28
    padded_vocab_size: int = 65024
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    kv_channels: int = 128
    num_attention_heads: int = 32
    seq_length: int = 2048
    hidden_dropout: float = 0.0
    classifier_dropout: float | None = None
    attention_dropout: float = 0.0
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    apply_residual_connection_post_layernorm: bool = False
    post_layer_norm: bool = True
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    bias_dropout_fusion: bool = True
    multi_query_attention: bool = False
    multi_query_group_num: int = 1
    apply_query_key_layer_scaling: bool = True
    attention_softmax_in_fp32: bool = True
    fp32_residual_connection: bool = False
    quantization_bit: int = 0
    pre_seq_len: int | None = None
    prefix_projection: bool = False
    # later checkpoints (ChatGLM3-6B-32k, GLM-4): the rotary base is 10000 x rope_ratio
    rope_ratio: float = 1.0
    original_rope: bool = True
    tie_word_embeddings: bool = False
    use_cache: bool = True
    initializer_range: float = 0.02
    # derived from the keys above (for peft's prefix tuning, which reads them from the config's dict)
    num_key_value_heads: int | None = None
    head_dim: int | None = None

    def __post_init__(self, **kwargs):
        self.num_key_value_heads = self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads
        self.head_dim = self.kv_channels
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """What the built-in model does not implement: one-line reasons, checked before it is built."""
        unsupported = {
            "rmsnorm": (not self.rmsnorm, "LayerNorm blocks (rmsnorm: false)"),
            "apply_residual_connection_post_layernorm": (
                self.apply_residual_connection_post_layernorm,
                "residuals after the layer norm",
            ),
            "post_layer_norm": (not self.post_layer_norm, "no final layer norm"),
            "quantization_bit": (bool(self.quantization_bit), "THUDM's own int4/int8 quantized weights"),
            "pre_seq_len": (self.pre_seq_len is not None, "THUDM's P-tuning v2 prefix (use method.name: prefix)"),
        }
        if getattr(self, "position_encoding_2d", False):
            raise UserError("the first ChatGLM-6B (position_encoding_2d) is not built in; ChatGLM2, ChatGLM3 and GLM-4 are")
        for key, (found, what) in unsupported.items():
            if found:
                raise UserError(f"ChatGLM config key {key}={getattr(self, key)!r}: {what} is not built in")
