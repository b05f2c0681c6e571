"""Gradient checkpointing: recompute each layer's activations in the backward pass instead of keeping them."""

from __future__ import annotations

from ..weights import base_model


def enable_checkpointing(model, reentrant: bool) -> None:
    """Gradient checkpointing on the transformers model (inside a peft wrapper, if any)."""
    base = base_model(model)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        # Reentrant checkpointing only backpropagates into a layer whose input requires grad; with frozen
        # embeddings nothing would (PyTorch: "element 0 of tensors does not require grad").
        base.enable_input_require_grads()
