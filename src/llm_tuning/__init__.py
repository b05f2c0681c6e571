"""llm-tuning: config-driven fine-tuning of causal language models on modest hardware.

    from llm_tuning import train, generate, merge
    summary = train("examples/demo.yaml", overrides=["train.max_steps=20"])
    print(generate(adapter=summary["config"]["train"]["output_dir"], prompts=["Who are you?"]))

Heavy libraries (torch, transformers) load on first use, so `import llm_tuning` and `--help` stay fast.
"""

import os

__version__ = "0.1.0"

# torch's CPU allocator puts blocks of 2 MiB and more on transparent huge pages when this is set before its first
# CPU allocation (it reads it once, then). Measured on SmolLM2 LoRA training (benchmarks/speed_vs_tutorial.py):
# peak RSS 20% lower (2,778 against 3,481 MiB) for about 4% of the speed, since freed activation blocks no longer
# linger in glibc's heap. Set THP_MEM_ALLOC_ENABLE=0 to keep torch's default.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
