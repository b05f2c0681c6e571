"""The registry of fine-tuning methods. Each method is one module with an `Options` dataclass (its config
section, peft's field names where peft has them), `apply(model, options, tokenizer) -> model`, which leaves
exactly the parameters that method trains with `requires_grad=True`, and `MERGEABLE` (with
`NOT_MERGEABLE_REASON` when false). Saving and loading what trained is method-independent (weights.py).
"""

from __future__ import annotations

from types import ModuleType

from ..errors import UserError
from . import bitfit, freeze, full, ia3, lora, prefix, prompt, ptuning

METHODS: dict[str, ModuleType] = {
    "full": full,
    "freeze": freeze,
    "bitfit": bitfit,
    "prompt": prompt,
    "ptuning": ptuning,
    "prefix": prefix,
    "lora": lora,
    "ia3": ia3,
}
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
