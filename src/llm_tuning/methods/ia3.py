"""IA3 (Liu et al., 2022): learned vectors that rescale the activations of chosen modules, through peft."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import IA3Config, TaskType

from ..config import option
from .peft_adapter import wrap

PEFT = True  # an adapter through peft (saved in peft's format)
MERGEABLE = True  # the scaling vectors fold into the frozen weights


@dataclass
class Options:
    name: str = option("ia3", "The method: `ia3`.")
    target_modules: list[str] | str | None = option(
        None,
        "Modules whose activations are rescaled (list, regex or `all-linear`); null uses peft's default "
        "for the architecture (k_proj, v_proj, down_proj on Llama).",
    )
    feedforward_modules: list[str] | str | None = option(
        None,
        "Which of target_modules are feed-forward layers (scaled on their input, not output); must be a subset of target_modules.",
    )


def apply(model, options: Options, tokenizer=None):
    make_config = partial(
        IA3Config,
        task_type=TaskType.CAUSAL_LM,
        target_modules=options.target_modules,
        feedforward_modules=options.feedforward_modules,
    )
    return wrap(model, make_config, "ia3")
