"""Every method by name, and the typed options of the one a config names."""

from __future__ import annotations

from ..config.schema import build_section
from ..errors import UserError
from . import adapter, bitfit, freeze, full, ia3, lora, prefix, prompt, ptuning
from .method import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        full.METHOD,
        freeze.METHOD,
        bitfit.METHOD,
        prompt.METHOD,
        ptuning.METHOD,
        prefix.METHOD,
        lora.METHOD,
        ia3.METHOD,
        adapter.METHOD,
    )
}
DEFAULT_METHOD = "lora"


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(values: dict, where: dict[str, str]):
    """Typed options of the method named by `values['name']` (default lora) from the config's method section."""
    name = values.pop("name", DEFAULT_METHOD)
    if name not in METHODS:
        location = f" ({where['method.name']})" if "method.name" in where else ""
        raise UserError(f"config key 'method.name'{location}: unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    options = build_section(METHODS[name].options, "method", values, where)
    options.name = name
    return options
