"""LoRA (Hu et al., 2021): trainable low-rank updates B·A added to frozen weight matrices, through peft."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig

from ..config.schema import option
from .method import Method
from .peft_adapter import peft_fields, wrap


@dataclass
class Options:
    name: str = option("lora", "The method: `lora`.")
    r: int = option(8, "Rank of the update matrices.", min=1)
    lora_alpha: int = option(
        8, "Scaling numerator: the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora).", min=1
    )
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.", min=0.0, max=0.99)
    target_modules: list[str] | str | None = option(
        None,
        "Modules to adapt: a list of names, a regex string matched against full module names, or `all-linear`. "
        "null uses peft's default for the architecture (q_proj, v_proj on Llama; query_key_value on BLOOM).",
    )
    modules_to_save: list[str] | None = option(
        None, "Modules trained in full and saved with the adapter (e.g. lm_head, embed_tokens)."
    )
    bias: str = option("none", "Which biases train with the adapter.", choices=("none", "all", "lora_only"))
    use_rslora: bool = option(False, "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r).")
    use_dora: bool = option(False, "DoRA: weight-decomposed LoRA (slower; learns magnitude and direction).")
    layers_to_transform: list[int] | None = option(None, "Only adapt these layer indices (null: all layers).")


def apply(model, options: Options, tokenizer=None):
    return wrap(model, LoraConfig, "lora", **peft_fields(options))


# B·A folds into the frozen weight: W' = W + (alpha / r) B·A
METHOD = Method(name="lora", options=Options, apply=apply, trains_base=False)
