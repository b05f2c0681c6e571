"""Freeze tuning: only the last N transformer layers (or the modules matching given patterns) train."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config.schema import option
from ..errors import UserError
from .method import Method
from .selection import compile_patterns, decoder_layers, train_only


@dataclass
class Options:
    name: str = option("freeze", "The method: `freeze`.")
    trainable_layers: int | None = option(
        2, "Train the last N transformer layers (null: none, then trainable_modules decides).", min=1
    )
    trainable_modules: list[str] | None = option(
        None, "Also train parameters whose full name matches one of these regular expressions (e.g. `mlp`, `self_attn\\.o_proj`)."
    )
    train_lm_head: bool = option(
        False, "Also train the LM head and the final norm (with tied embeddings this trains the input embeddings too)."
    )


def apply(model, options: Options, tokenizer=None):
    if options.trainable_layers is None and not options.trainable_modules and not options.train_lm_head:
        raise UserError(
            "method freeze trains nothing: set method.trainable_layers, method.trainable_modules or method.train_lm_head"
        )
    layers_name, layers = decoder_layers(model)
    prefixes: tuple[str, ...] = ()
    if options.trainable_layers:
        if options.trainable_layers > len(layers):
            raise UserError(
                f"config key 'method.trainable_layers': {options.trainable_layers} but the model has {len(layers)} layers"
            )
        prefixes = tuple(f"{layers_name}.{i}." for i in range(len(layers) - options.trainable_layers, len(layers)))
    patterns = compile_patterns("method.trainable_modules", options.trainable_modules or [])
    head_names = _head_parameter_names(model, layers_name) if options.train_lm_head else set()

    def should_train(name: str) -> bool:
        return name.startswith(prefixes) or any(p.search(name) for p in patterns) or name in head_names

    return train_only(model, should_train)


def _head_parameter_names(model, layers_name: str) -> set[str]:
    """Names of the LM head's parameters and of the final norm (the norm that follows the layers).
    Found by identity: with tied embeddings the head's weight is listed under the input embedding's name."""
    base = layers_name.rsplit(".", 1)[0]  # "model" for model.layers, "transformer" for transformer.h
    norm = re.compile(rf"^{re.escape(base)}\.(norm|ln_f|final_layernorm|final_layer_norm)\.")
    head = {id(p) for p in model.get_output_embeddings().parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head or norm.match(n)}


# the trained weights replace the base's: merge writes them as a standalone folder
METHOD = Method(name="freeze", options=Options, apply=apply, trains_base=True)
