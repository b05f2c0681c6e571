"""Does a short LoRA run make SmolLM2-135M better on held-out instructions? Validation loss and ROUGE-L (plus
BLEU-4 and exact match) of the base model and of the trained run, on the same held-out records.

    python benchmarks/eval_alpaca_en.py [--steps 60] [--limit 40] [--output benchmarks/results/eval_alpaca_en_cpu.md]

Data: ../shared/data/alpaca_en_demo.json, the last 10% held out (shuffled with seed 42 first). LoRA r=16 on all
linear layers, the plain template, max length 384, micro-batch 4, lr 2e-4, fp32. Scores with `llm-tuning eval`
(greedy, up to 128 new tokens) on the first --limit held-out records; the loss is on the same records.
Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "alpaca_en_demo.json"
NAMES = ("loss", "perplexity", "rougeL", "rouge1", "rouge2", "bleu4", "exact_match")


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, check=False)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return

    work = Path(tempfile.mkdtemp(prefix="llm-tuning-eval-"))
    records = json.loads(DATA.read_text(encoding="utf-8"))
    random.Random(42).shuffle(records)
    held_out = len(records) // 10
    train, test = work / "train.json", work / "test.json"
    train.write_text(json.dumps(records[held_out:], ensure_ascii=False), encoding="utf-8")
    test.write_text(json.dumps(records[:held_out], ensure_ascii=False), encoding="utf-8")
    config = work / "config.yaml"
    config.write_text(
        "model: {path: smollm2-135m}\n"
        "method: {name: lora, r: 16, lora_alpha: 32, target_modules: all-linear}\n"
        f"data: {{path: {train}, template: plain, max_length: 384}}\n"
        f"train: "
        f"{{output_dir: {work / 'run'}, max_steps: {args.steps}, batch_size: 4, learning_rate: 2.0e-4, save_steps: 100000}}\n"
    )
    generation = ["--limit", str(args.limit), "--max-new-tokens", "128"]
    run(
        [
            sys.executable,
            "-m",
            "llm_tuning",
            "eval",
            str(config),
            "--data",
            str(test),
            "--output",
            str(work / "base-eval"),
            *generation,
        ]
    )
    run([sys.executable, "-m", "llm_tuning", "train", str(config)])
    run(
        [
            sys.executable,
            "-m",
            "llm_tuning",
            "eval",
            "--adapter",
            str(work / "run"),
            "--data",
            str(test),
            "--output",
            str(work / "run-eval"),
            *generation,
        ]
    )

    before = json.loads((work / "base-eval" / "metrics.json").read_text())
    after = json.loads((work / "run-eval" / "metrics.json").read_text())
    summary = json.loads((work / "run" / "run_summary.json").read_text())
    lines = [
        f"SmolLM2-135M, LoRA r=16 all-linear, {args.steps} steps ({summary['train_tokens']} tokens, "
        f"{summary['train_runtime_s']:.0f} s); "
        f"{before['count']} held-out records of {held_out} (alpaca_en_demo, seed 42):",
        "",
        "| model | " + " | ".join(NAMES) + " |",
        "| --- |" + " ---: |" * len(NAMES),
    ]
    for label, metrics in (("base (before)", before), ("after LoRA", after)):
        lines.append(f"| {label} | " + " | ".join(f"{metrics[name]:.4f}" for name in NAMES) + " |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            f"Command: `python benchmarks/eval_alpaca_en.py --steps {args.steps} --limit {args.limit}`\n\n{table}\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
