"""P-tuning (Liu et al., 2021): virtual token embeddings produced by a small MLP or LSTM encoder, through peft."""

from __future__ import annotations

from dataclasses import dataclass

from peft import PromptEncoderConfig

from ..config.schema import option
from .method import VIRTUAL_TOKENS_NOT_MERGEABLE, Method
from .peft_adapter import peft_fields, wrap


@dataclass
class Options:
    name: str = option("ptuning", "The method: `ptuning`.")
    num_virtual_tokens: int = option(20, "Virtual tokens prepended to every input.", min=1)
    encoder_reparameterization_type: str = option("MLP", "The prompt encoder.", choices=("MLP", "LSTM"))
    encoder_hidden_size: int | None = option(None, "Hidden size of the prompt encoder (null: the model's hidden size).", min=1)
    encoder_num_layers: int = option(2, "Layers of the prompt encoder (LSTM).", min=1)
    encoder_dropout: float = option(0.0, "Dropout in the prompt encoder.", min=0.0, max=0.99)


def apply(model, options: Options, tokenizer=None):
    hidden = model.config.get_text_config().hidden_size
    return wrap(
        model, PromptEncoderConfig, "ptuning", **peft_fields(options, encoder_hidden_size=options.encoder_hidden_size or hidden)
    )


METHOD = Method(
    name="ptuning", options=Options, apply=apply, trains_base=False, not_mergeable_reason=VIRTUAL_TOKENS_NOT_MERGEABLE
)
