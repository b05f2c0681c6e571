"""BitFit (Ben Zaken et al., 2021): only the bias parameters train."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import option
from ..errors import UserError
from .method import Method
from .selection import train_only


@dataclass
class Options:
    name: str = option("bitfit", "The method: `bitfit`.")


def apply(model, options: Options, tokenizer=None):
    if not any(name.endswith(".bias") for name, _ in model.named_parameters()):
        raise UserError(
            f"method bitfit has nothing to train: {type(model).__name__} has no bias parameters "
            "(Llama-family models have none); choose another method, e.g. lora"
        )
    return train_only(model, lambda name: name.endswith(".bias"))


# the trained biases replace the base's: merge writes them as a standalone folder
METHOD = Method(name="bitfit", options=Options, apply=apply, trains_base=True)
