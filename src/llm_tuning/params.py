"""Count what trains: the `trainable params: X || all params: Y || trainable%: Z` line, as peft prints it."""

from __future__ import annotations


def count_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameters; for a peft model, peft's own count (which also undoes 4-bit packing)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_line(trainable: int, total: int) -> str:
    """Same format and rounding as peft's print_trainable_parameters."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
