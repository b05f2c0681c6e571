"""Start-up time: bitsandbytes compiles nothing until one of its kernels runs.

peft imports bitsandbytes wherever it is installed, and transformers' Trainer imports peft, so every command that
trains, chats, serves or merges imports it, quantized base or not. bitsandbytes wraps its default kernels in
`torch.compile` as it is imported, and a call to `torch.compile` imports TorchDynamo and Inductor: seconds of every
start-up (docs/speed.md, "Start-up"), paid by each process of a multi-process run and each row of a comparison.

`defer_bitsandbytes_compile` (called as the package is imported, before anything imports bitsandbytes) hands
bitsandbytes, while its modules run, a `torch.compile` that compiles a function the first time it is called. That
is when `torch.compile` itself compiles, so a kernel that runs behaves as before; bitsandbytes' own fallback to
the plain function still catches a compile that fails.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

DEFERRED_PACKAGE = "bitsandbytes"


def defer_bitsandbytes_compile() -> None:
    """Install the import hook once; a no-op where bitsandbytes is already imported."""
    if DEFERRED_PACKAGE not in sys.modules and not any(isinstance(f, DeferCompileFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, DeferCompileFinder())


class DeferCompileFinder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as the other finders do, and runs its top module with torch.compile deferred: the
    package imports its kernels from there, so they are all wrapped while it runs."""

    def find_spec(self, name, path=None, target=None):
        if name != DEFERRED_PACKAGE:
            return None
        sys.meta_path.remove(self)  # once; and so that the search below finds the package itself
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = DeferCompileLoader(spec.loader)
        return spec


class DeferCompileLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # resources, source and the rest: the package's own loader answers
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import torch  # here, not at the top: `import llm_tuning` stays light (llm-tuning --help)

        compile_now = torch.compile
        torch.compile = functools.partial(compile_on_first_call, compile_now)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = compile_now


def compile_on_first_call(compile_now, model=None, **options):
    """`torch.compile(model, **options)`, or its decorator form, that calls `compile_now` on the first call."""
    if model is None:
        return lambda function: compile_on_first_call(compile_now, function, **options)
    compiled = None

    @functools.wraps(model)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = compile_now(model, **options)
        return compiled(*args, **kwargs)

    return call
