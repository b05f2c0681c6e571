"""Shared by the methods that peft implements: their options are peft's own fields, passed through by name,
and peft's configuration errors become one-line UserErrors."""

from __future__ import annotations

import dataclasses

from peft import PeftConfig, TaskType, get_peft_model

from ..errors import UserError, first_line


def peft_fields(options, **replacements) -> dict:
    """The method's options as peft keyword arguments (everything but `name`), with `replacements` applied."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "name"} | replacements


def wrap(model, config_class: type[PeftConfig], method: str, **fields):
    """Build the peft config for a causal LM and wrap the model; peft validates in both steps."""
    try:
        return get_peft_model(model, config_class(task_type=TaskType.CAUSAL_LM, **fields))
    except (ValueError, TypeError, KeyError) as e:
        # peft says which target modules were not found, or which option is inconsistent; keep its first line.
        raise UserError(f"method {method}: {first_line(e)}") from None
