"""Prompt tuning (Lester et al., 2021): trainable virtual token embeddings prepended to every input, through peft."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import PromptTuningConfig, PromptTuningInit, TaskType

from ..config import option
from ..errors import UserError
from .peft_adapter import wrap

PEFT = True  # an adapter through peft (saved in peft's format)
MERGEABLE = False
NOT_MERGEABLE_REASON = "its virtual tokens are extra inputs, there is nothing to fold into the weights; serve it with --adapter"

DEFAULT_VIRTUAL_TOKENS = 20


@dataclass
class Options:
    name: str = option("prompt", "The method: `prompt`.")
    num_virtual_tokens: int | None = option(
        None,
        f"Virtual tokens prepended to every input (null: {DEFAULT_VIRTUAL_TOKENS}, or the token count of prompt_tuning_init_text).",
        min=1,
    )
    prompt_tuning_init_text: str | None = option(
        None, "Initialise the virtual tokens from the embeddings of this text (null: random initialisation)."
    )


def apply(model, options: Options, tokenizer=None):
    if options.prompt_tuning_init_text is None:
        make_config = partial(
            PromptTuningConfig,
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=options.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
        return wrap(model, make_config, "prompt")
    if not options.prompt_tuning_init_text.strip():
        raise UserError("config key 'method.prompt_tuning_init_text' is empty; give a text or null for random initialisation")
    if tokenizer is None:
        raise UserError("method prompt with prompt_tuning_init_text needs the model's tokenizer")
    text_tokens = len(tokenizer(options.prompt_tuning_init_text, add_special_tokens=False)["input_ids"])
    make_config = partial(
        PromptTuningConfig,
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.num_virtual_tokens or text_tokens,  # peft repeats or cuts the text to fit
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=options.prompt_tuning_init_text,
        tokenizer_name_or_path=tokenizer.name_or_path,
    )
    return wrap(model, make_config, "prompt")
