"""What a command pays before it trains: importing the training code, with bitsandbytes' compiles deferred (the
package's default, speed/startup.py) and as bitsandbytes runs them on its own; and reading the model's tokenizer,
which a run now does once (the memory estimate takes training's) where it read it twice.

    python benchmarks/startup.py [--rounds 5] [--output FILE]

Each import is timed in a new interpreter, the two kinds alternating; the tokenizer is SmolLM2-135M's, from the
llm-tuning cache (converted on first use).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speed_vs_tutorial import publish

IMPORTS = {
    "deferred (default)": "import llm_tuning.training.run",
    "compiled as imported": (
        "import sys, llm_tuning\n"
        "from llm_tuning.speed.startup import DeferCompileFinder\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, DeferCompileFinder)]\n"
        "import llm_tuning.training.run"
    ),
}


def time_imports(rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {label: [] for label in IMPORTS}
    for round_ in range(rounds + 1):  # the first round fills the page cache
        for label, code in IMPORTS.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            if round_:
                seconds[label].append(time.perf_counter() - started)
        print(f"  round {round_} done", file=sys.stderr, flush=True)
    return seconds


def time_tokenizer(rounds: int) -> list[float]:
    from llm_tuning.config.load import build_config
    from llm_tuning.models.loading import load_tokenizer
    from llm_tuning.models.resolve import resolve_model_path

    model = build_config({"model": {"path": "smollm2-135m"}}).model
    path = resolve_model_path(model.path)
    load_tokenizer(model, path)  # the first read fills the page cache
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        load_tokenizer(model, path)
        seconds.append(time.perf_counter() - started)
    return seconds


def table(imports: dict[str, list[float]], tokenizer: list[float], rounds: int) -> str:
    deferred, compiled = (statistics.median(imports[label]) for label in IMPORTS)
    return "\n".join(
        [
            f"Seconds, median of {rounds} (imports: each in a new interpreter, alternating):",
            "",
            "| what | seconds |",
            "| --- | ---: |",
            f"| `import llm_tuning.training.run`, bitsandbytes' compiles deferred (default) | {deferred:.2f} |",
            f"| the same, bitsandbytes compiling as it is imported | {compiled:.2f} |",
            f"| saved per process | {compiled - deferred:.2f} ({1 - deferred / compiled:.0%}) |",
            f"| reading SmolLM2-135M's tokenizer (a run read it twice, now once) | {statistics.median(tokenizer):.2f} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each import and of the tokenizer")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    imports = time_imports(args.rounds)
    rounds = f" --rounds {args.rounds}" if args.rounds != 5 else ""
    publish([table(imports, time_tokenizer(args.rounds), args.rounds)], args.output, f"python benchmarks/startup.py{rounds}")


if __name__ == "__main__":
    main()
