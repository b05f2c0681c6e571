"""Prompt tuning (Lester et al., 2021): trainable virtual token embeddings prepended to every input, through peft."""

from __future__ import annotations

from dataclasses import dataclass

from peft import PromptTuningConfig, PromptTuningInit

from ..config.schema import option
from ..errors import UserError
from .method import VIRTUAL_TOKENS_NOT_MERGEABLE, Method
from .peft_adapter import peft_fields, wrap

DEFAULT_VIRTUAL_TOKENS = 20


@dataclass
class Options:
    name: str = option("prompt", "The method: `prompt`.")
    num_virtual_tokens: int | None = option(
        None,
        f"Virtual tokens prepended to every input (null: {DEFAULT_VIRTUAL_TOKENS}, or the token count of "
        "prompt_tuning_init_text).",
        min=1,
    )
    prompt_tuning_init_text: str | None = option(
        None, "Initialise the virtual tokens from the embeddings of this text (null: random initialisation)."
    )


def apply(model, options: Options, tokenizer=None):
    text = options.prompt_tuning_init_text
    if text is None:
        fields = peft_fields(
            options,
            num_virtual_tokens=options.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
        return wrap(model, PromptTuningConfig, "prompt", **fields)
    if not text.strip():
        raise UserError("config key 'method.prompt_tuning_init_text' is empty; give a text or null for random initialisation")
    if tokenizer is None:
        raise UserError("method prompt with prompt_tuning_init_text needs the model's tokenizer")
    text_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    fields = peft_fields(
        options,
        num_virtual_tokens=options.num_virtual_tokens or text_tokens,  # peft repeats or cuts the text to fit
        prompt_tuning_init=PromptTuningInit.TEXT,
        tokenizer_name_or_path=tokenizer.name_or_path,
    )
    return wrap(model, PromptTuningConfig, "prompt", **fields)


METHOD = Method(name="prompt", options=Options, apply=apply, trains_base=False, not_mergeable_reason=VIRTUAL_TOKENS_NOT_MERGEABLE)
