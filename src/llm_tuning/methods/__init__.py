"""The registry of fine-tuning methods. Each method is one module with an `Options` dataclass (its config
section, peft's field names where peft has them) and `apply(model, options) -> model`, which leaves
exactly the parameters that method trains with `requires_grad=True`.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import UserError
from . import lora

METHODS: dict[str, ModuleType] = {"lora": lora}
DEFAULT_METHOD = "lora"


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(values: dict, where: dict[str, str]):
    """Typed options of the method named by `values['name']` (default lora) from the config's method section."""
    from ..config import build_section

    name = values.pop("name", DEFAULT_METHOD)
    if name not in METHODS:
        location = f" ({where['method.name']})" if "method.name" in where else ""
        raise UserError(f"config key 'method.name'{location}: unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    options = build_section(METHODS[name].Options, "method", values, where)
    options.name = name
    return options
