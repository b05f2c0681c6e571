"""P-tuning (Liu et al., 2021): virtual token embeddings produced by a small MLP or LSTM encoder, through peft."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import PromptEncoderConfig, TaskType

from ..config import option
from .peft_adapter import wrap

PEFT = True  # an adapter through peft (saved in peft's format)
MERGEABLE = False
NOT_MERGEABLE_REASON = "its virtual tokens are extra inputs, there is nothing to fold into the weights; serve it with --adapter"


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
    make_config = partial(
        PromptEncoderConfig,
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=options.encoder_reparameterization_type,
        encoder_hidden_size=options.encoder_hidden_size or hidden,
        encoder_num_layers=options.encoder_num_layers,
        encoder_dropout=options.encoder_dropout,
    )
    return wrap(model, make_config, "ptuning")
