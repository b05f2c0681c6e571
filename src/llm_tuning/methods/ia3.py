"""IA3 (Liu et al., 2022): learned vectors that rescale the activations of chosen modules, through peft."""

from __future__ import annotations

from dataclasses import dataclass

from peft import IA3Config

from ..config.schema import option
from .method import Method
from .peft_adapter import peft_fields, wrap


@dataclass
class Options:
    name: str = option("ia3", "The method: `ia3`.")
    target_modules: list[str] | str | None = option(
        None,
        "Modules whose activations are rescaled (list, regex or `all-linear`); null uses peft's default "
        "for the architecture (k_proj, v_proj, down_proj on Llama; query_key_value, mlp.dense_4h_to_h on BLOOM and ChatGLM).",
    )
    feedforward_modules: list[str] | str | None = option(
        None,
        "Which of target_modules are feed-forward layers (scaled on their input, not output); must be a subset of "
        "target_modules.",
    )


# model types peft has no IA3 default for: its choice for BLOOM, whose layers have the same names
DEFAULT_TARGETS = {"chatglm": (["query_key_value", "mlp.dense_4h_to_h"], ["mlp.dense_4h_to_h"])}


def apply(model, options: Options, tokenizer=None):
    fields = peft_fields(options)
    defaults = DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""))
    if defaults and options.target_modules is None:
        fields["target_modules"], fields["feedforward_modules"] = defaults
    return wrap(model, IA3Config, "ia3", **fields)


# the scaling vectors fold into the frozen weights
METHOD = Method(name="ia3", options=Options, apply=apply, trains_base=False)
