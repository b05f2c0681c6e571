"""LoRA (Hu et al., 2021): trainable low-rank updates B·A added to frozen weight matrices, through peft."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from peft import LoraConfig, TaskType

from ..config import option
from .peft_adapter import wrap

PEFT = True  # an adapter through peft (saved in peft's format)
MERGEABLE = True  # B·A folds into the frozen weight: W' = W + (alpha / r) B·A


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
    make_config = partial(
        LoraConfig,
        task_type=TaskType.CAUSAL_LM,
        r=options.r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=options.target_modules,
        modules_to_save=options.modules_to_save,
        bias=options.bias,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
        layers_to_transform=options.layers_to_transform,
    )
    return wrap(model, make_config, "lora")
