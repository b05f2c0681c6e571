"""What llm-tuning needs to know of a fine-tuning method, in one record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

VIRTUAL_TOKENS_NOT_MERGEABLE = (
    "its virtual tokens are extra inputs, there is nothing to fold into the weights; serve it with --adapter"
)


@dataclass(frozen=True)
class Method:
    name: str
    """The config's `method.name`."""
    options: type
    """The dataclass of its config section (`method.*`), built with `config.schema.option`."""
    apply: Callable
    """`apply(model, options, tokenizer) -> model`: the model with exactly what the method trains left with
    `requires_grad=True`."""
    trains_base: bool
    """True: trains some of the model's own parameters (saved as `trained_weights.safetensors`), which
    therefore cannot be quantized. False: adds tensors of its own beside a frozen base (an adapter: peft's, or
    ours), so it trains on an 8-bit or 4-bit base too. weights.py saves and loads either."""
    not_mergeable_reason: str | None = None
    """Why what it trains cannot be folded into the base weights; None when `merge` can."""
    supports_reentrant_checkpointing: bool = True
    """Whether its gradients survive torch's reentrant activation checkpointing."""

    @property
    def mergeable(self) -> bool:
        return self.not_mergeable_reason is None
