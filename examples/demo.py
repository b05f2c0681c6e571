"""The demo: answers to held-out prompts from SmolLM2-135M-Instruct before and after a short LoRA run
on examples/data/demo.jsonl. Run from the repository root: `python examples/demo.py [key=value ...]`."""

import os
import sys
import time
from pathlib import Path

from llm_tuning.cli import quiet_libraries
from llm_tuning.speed.allocator import restart_with_preferred_allocator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "demo.yaml"
PROMPTS = ROOT / "examples" / "data" / "demo_prompts.txt"


def main(overrides: list[str]) -> None:
    started = time.time()
    os.chdir(ROOT)  # the config's relative paths are taken from the current directory
    quiet_libraries()
    # The training API loads torch and bitsandbytes: only after the allocator's restart (or torch loads twice) and
    # after quiet_libraries (or bitsandbytes' import-time warnings reach the terminal, on CPUs with AVX512-BF16).
    from llm_tuning import generate, load_config, train
    from llm_tuning.generation import GenerationOptions, read_prompts

    options = GenerationOptions(max_new_tokens=64, repetition_penalty=1.2)  # greedy; a 135M model otherwise loops
    config = load_config(CONFIG, ["train.overwrite=true", *overrides])  # the demo may be re-run
    prompts = read_prompts(PROMPTS)

    print("== answers of the base model ==", flush=True)
    before = generate(config, prompts, options=options)

    print("== fine-tuning ==", flush=True)
    train_started = time.time()
    summary = train(config)
    train_seconds = time.time() - train_started

    print("== answers after fine-tuning ==", flush=True)
    after = generate(adapter=config.train.output_dir, prompts=prompts, options=options)

    for prompt, old, new in zip(prompts, before, after):
        print(f"\n### {prompt}\n  before: {_one_line(old)}\n  after:  {_one_line(new)}")
    losses = summary["loss_history"]
    print(
        f"\nloss {losses[0]['loss']:.3f} (step {losses[0]['step']}) -> {losses[-1]['loss']:.3f} (step {losses[-1]['step']}); "
        f"training {train_seconds:.0f} s, {summary['tokens_per_s']:.0f} tokens/s, peak RSS "
        f"{summary['peak_memory_bytes'] / 2**30:.2f} GiB; "
        f"whole demo {time.time() - started:.0f} s"
    )
    print(f"adapter, config and run summary: {config.train.output_dir}")
    print(f"chat with it: llm-tuning chat --adapter {config.train.output_dir}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    restart_with_preferred_allocator()  # on tcmalloc where installed, as the llm-tuning command runs
    main(sys.argv[1:])
