"""llm-tuning: config-driven fine-tuning of causal language models on modest hardware.

    from llm_tuning import train, generate, merge
    summary = train("examples/demo.yaml", overrides=["train.max_steps=20"])
    print(generate(adapter=summary["config"]["train"]["output_dir"], prompts=["Who are you?"]))

Heavy libraries (torch, transformers) load on first use, so `import llm_tuning` and `--help` stay fast.
"""

from .allocator import default_huge_pages

__version__ = "0.1.0"

default_huge_pages()  # before torch's first CPU allocation, when it reads the setting

__all__ = ["train", "generate", "chat", "merge", "load_config", "UserError"]


def __getattr__(name):
    if name == "train":
        from .training import train

        return train
    if name in ("generate", "chat"):
        from . import infer

        return getattr(infer, name)
    if name == "merge":
        from .export import merge

        return merge
    if name == "load_config":
        from .config import load_config

        return load_config
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'llm_tuning' has no attribute {name!r}")
