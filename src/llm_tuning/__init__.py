"""llm-tuning: config-driven fine-tuning of causal language models on modest hardware.

    from llm_tuning import train, generate, merge, compare, load_model
    summary = train("examples/demo.yaml", overrides=["train.max_steps=20"])
    print(generate(adapter=summary["config"]["train"]["output_dir"], prompts=["Who are you?"]))
    model, tokenizer = load_model("smollm2-135m", dtype="float32")  # as training loads it

The public functions load on first use (`__getattr__`), so that `import llm_tuning` and `llm-tuning --help`
stay fast and the command can restart on another allocator before torch loads.
"""

from importlib import import_module

from .speed.allocator import default_huge_pages
from .speed.startup import defer_bitsandbytes_compile

__version__ = "0.1.0"

default_huge_pages()  # before torch's first CPU allocation, when it reads the setting
defer_bitsandbytes_compile()  # before peft or transformers imports bitsandbytes

# public name -> the module that defines it; no module of the package shares a public name, so importing a
# submodule never replaces one of these functions on the package
PUBLIC = {
    "train": "llm_tuning.training.run",
    "generate": "llm_tuning.generation",
    "chat": "llm_tuning.generation",
    "merge": "llm_tuning.merging",
    "compare": "llm_tuning.comparison.runner",
    "export_gguf": "llm_tuning.export.gguf",
    "load_model": "llm_tuning.models.loading",
    "load_config": "llm_tuning.config.load",
    "UserError": "llm_tuning.errors",
}
__all__ = list(PUBLIC)


def __getattr__(name):
    if name in PUBLIC:
        return getattr(import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'llm_tuning' has no attribute {name!r}")
