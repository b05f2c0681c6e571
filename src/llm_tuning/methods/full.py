"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .selection import train_only

PEFT = False  # trains the model's own parameters (saved as trained_weights.safetensors)
MERGEABLE = True  # the trained weights are the model: merge writes them as a standalone folder


@dataclass
class Options:
    name: str = option("full", "The method: `full`.")


def apply(model, options: Options, tokenizer=None):
    return train_only(model, lambda name: True)
