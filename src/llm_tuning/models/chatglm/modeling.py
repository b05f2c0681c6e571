"""ChatGLMForConditionalGeneration in transformers' style, with the checkpoint's own module tree:

    transformer.embedding.word_embeddings
    transformer.rotary_pos_emb.inv_freq
    transformer.encoder.layers.N.{input_layernorm, self_attention.{query_key_value, dense}, post_attention_layernorm,
                                  mlp.{dense_h_to_4h, dense_4h_to_h}}
    transformer.encoder.final_layernorm
    transformer.output_layer                  (the LM head, inside `transformer` as in the original)

so THUDM's safetensors and .bin shards load unchanged and a saved model loads with the original code. Masks come from
transformers (padding, caches, packed rows whose positions restart), the cache is transformers' DynamicCache."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration import ChatGLMConfig
from .layers import ChatGLMBlock, ChatGLMRMSNorm, ChatGLMRotaryEmbedding


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ChatGLMBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": ChatGLMBlock}
    # some checkpoints store the rotary buffer, some do not: it is recomputed from the config either way
    _keys_to_ignore_on_load_missing = [r"rotary_pos_emb\.inv_freq"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ChatGLMRotaryEmbedding):
            with torch.no_grad():
                module.inv_freq.copy_(module.stored_inv_freq())


class ChatGLMEmbedding(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class ChatGLMTransformer(nn.Module):
    """The blocks and the final norm (the original's GLMTransformer, `transformer.encoder`)."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList([ChatGLMBlock(config, index) for index in range(config.num_layers)])
        self.final_layernorm = ChatGLMRMSNorm(config.hidden_size, config.layernorm_epsilon)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, position_embeddings, attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
            )
        return self.final_layernorm(hidden_states)


class ChatGLMModel(ChatGLMPreTrainedModel):
    """Embeddings, rotary embedding, blocks and final norm; the LM head lives here too (as in the checkpoint) but
    is applied by ChatGLMForConditionalGeneration, so this model returns the final hidden states."""

    def __init__(self, config: ChatGLMConfig):
        config.validate_architecture()
        super().__init__(config)
        self.embedding = ChatGLMEmbedding(config)
        self.rotary_pos_emb = ChatGLMRotaryEmbedding(config)
        self.encoder = ChatGLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def set_input_embeddings(self, value):
        self.embedding.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past_seen
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_pos_emb(inputs_embeds, position_ids)
        hidden_states = self.encoder(inputs_embeds, position_embeddings, mask, past_key_values, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    """The causal language model: `transformer` (ChatGLMModel), then its `output_layer`."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.transformer.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def set_output_embeddings(self, new_embeddings):
        self.transformer.output_layer = new_embeddings

    def get_decoder(self):
        return self.transformer

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.transformer.output_layer(hidden_states[:, kept, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.padded_vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )
