"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import option
from .method import Method
from .selection import train_only


@dataclass
class Options:
    name: str = option("full", "The method: `full`.")


def apply(model, options: Options, tokenizer=None):
    return train_only(model, lambda name: True)


# the trained weights are the model: merge writes them as a standalone folder
METHOD = Method(name="full", options=Options, apply=apply, trains_base=True)
