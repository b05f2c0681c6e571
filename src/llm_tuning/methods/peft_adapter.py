"""Shared by the methods that peft implements: wrap the model, turning peft's configuration errors into
one-line UserErrors."""

from __future__ import annotations

from typing import Callable

from peft import PeftConfig, get_peft_model

from ..errors import UserError


def wrap(model, make_config: Callable[[], PeftConfig], method: str):
    """Build the peft config and wrap the model; peft validates in both steps."""
    try:
        return get_peft_model(model, make_config())
    except (ValueError, TypeError, KeyError) as e:
        # peft says which target modules were not found, or which option is inconsistent; keep its first line.
        raise UserError(f"method {method}: {str(e).strip().splitlines()[0]}") from None
