"""llm-tuning against the tutorial recipe (benchmarks/tutorial_recipe.py) on the same work, each run in its own
process, alternating, so that each peak RSS is its own.

    python benchmarks/speed_vs_tutorial.py [--levers] [--repeat N] [--scaling [LENGTH ...]] [--scaling-only]
                                           [--precision fp32|bf16] [--output benchmarks/results/speed_vs_tutorial_cpu.md]

Work: SmolLM2-135M, LoRA r=8 (alpha 32, dropout 0.1) on q_proj,v_proj, ../shared/data/alpaca_zh_demo.json with the
last 80 records held out, the plain template, max length 384, micro-batch 4, lr 1e-4 (linear decay, no warmup),
40 optimizer steps, fp32 (`--precision bf16`, for a GPU: both load the base in bfloat16 and train under bf16
autocast, the tutorial with Trainer's bf16=True, llm-tuning with train.precision=bf16), seed 42. With packing a
micro-batch is 4 rows of up to 384 tokens, so llm-tuning goes through more samples in its 40 steps: compare tokens
per second, not time.
Printed per run: non-padding tokens processed, tokens/s (non-padding tokens / train time), peak memory (RSS on a
CPU; on a GPU, the GPU memory torch reserved), final training loss (mean of the last 10 steps) and the loss on the
80 held-out records after training; then the ratios.
The tutorial runs first and again last (its mean is the reference); --repeat N runs the llm-tuning variants N
times, each round followed by the tutorial again, and rates each variant by the mean of its runs. --levers adds,
between them, llm-tuning with each lever taken away from the defaults (packing with per-sample attention; the
chunked loss; lean activations; tcmalloc; huge pages on glibc; oneDNN products), with none of them, with
gradient checkpointing, with train.compile, and on glibc's malloc with fixed thresholds. The run summary of each
llm-tuning run names its allocator: without tcmalloc (`make install` installs it where it can) the defaults use
glibc's. The first line of the output names the CPU and any instruction-set limit (ONEDNN_MAX_CPU_ISA and the like).
--scaling adds tokens/s and peak RSS at max length 256, 512, 1024 and 2048, or at the lengths given (micro-batch 1,
10 steps, records concatenated so that every sample fills the length); --scaling-only skips the comparison.
Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "alpaca_zh_demo.json"
HELDOUT = 80
SCALING_LENGTHS = [256, 512, 1024, 2048]
LORA = [
    "method.name=lora",
    "method.r=8",
    "method.lora_alpha=32",
    "method.lora_dropout=0.1",
    "method.target_modules=[q_proj, v_proj]",
]
COMMON = [
    "model.path=smollm2-135m",
    "model.dtype=float32",
    "data.template=plain",
    *LORA,
    "train.learning_rate=1e-4",
    "train.lr_scheduler=linear",
    "train.warmup_ratio=0",
    "train.seed=42",
    "train.save_steps=100000",
]
# label: (overrides, environment); the defaults pack rows (with per-sample attention), compute the loss in chunks,
# keep lean activations, run on tcmalloc where installed (allocator.py; on glibc they put large blocks on transparent
# huge pages instead: THP_MEM_ALLOC_ENABLE) and multiply frozen layers and the LM head with the libraries measured
# fastest at start-up (train.cpu_matmul=auto: oneDNN, OpenBLAS or torch's own)
PRECISIONS = {"fp32": [], "bf16": ["model.dtype=bfloat16", "train.precision=bf16"]}  # llm-tuning's overrides for each
PLAIN_TORCH = {"THP_MEM_ALLOC_ENABLE": "0"}  # torch's default, whatever this process inherited from importing llm_tuning
GLIBC = {"LLM_TUNING_ALLOCATOR": "system"}
# glibc's own tunables. Setting a threshold stops glibc raising its mmap threshold as large blocks are freed (its
# default, up to 32 MiB): either every block of 32 MiB or less comes from the heap, or every block over 128 KiB is
# mapped afresh, and faulted in again, at each allocation.
GLIBC_LARGE = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"}
GLIBC_SMALL = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1073741824"}
NONE_OF_THEM = [
    "data.packing=false",
    "train.loss_chunk_size=0",
    "train.lean_activations=false",
    "train.cpu_matmul=torch",
    "train.split_step=false",
]
LEVERS = {
    "llm-tuning (defaults)": ([], {}),
    "llm-tuning, defaults without packing": (["data.packing=false"], {}),
    "llm-tuning, defaults without the chunked loss": (["train.loss_chunk_size=0"], {}),
    "llm-tuning, defaults without lean activations": (["train.lean_activations=false"], {}),
    "llm-tuning, defaults without the split step (train.split_step=false)": (["train.split_step=false"], {}),
    "llm-tuning, defaults without tcmalloc (glibc's malloc, with huge pages)": ([], GLIBC),
    "llm-tuning, defaults without tcmalloc or huge pages": ([], {**GLIBC, **PLAIN_TORCH}),
    "llm-tuning, defaults on glibc, mmap threshold fixed at 32 MiB, trim at 256 MiB": ([], {**GLIBC, **GLIBC_LARGE}),
    "llm-tuning, defaults on glibc, mmap threshold fixed at 32 MiB, trim at 256 MiB, no huge pages": (
        [],
        {**GLIBC, **GLIBC_LARGE, **PLAIN_TORCH},
    ),
    "llm-tuning, defaults on glibc, mmap threshold fixed at 128 KiB (trim at 1 GiB)": ([], {**GLIBC, **GLIBC_SMALL}),
    "llm-tuning, defaults with torch's products only (train.cpu_matmul=torch)": (["train.cpu_matmul=torch"], {}),
    "llm-tuning, none of them": (NONE_OF_THEM, {**PLAIN_TORCH, **GLIBC}),
    "llm-tuning, defaults + gradient checkpointing": (["train.gradient_checkpointing=true"], {}),
    "llm-tuning, defaults + train.compile": (["train.compile=true"], {}),
}


def split_records(records: list[dict], work: Path) -> tuple[Path, Path]:
    """The training records and the last HELDOUT records, each written to a JSON file in `work`."""
    train, heldout = work / "train.json", work / "heldout.json"
    train.write_text(json.dumps(records[:-HELDOUT], ensure_ascii=False), encoding="utf-8")
    heldout.write_text(json.dumps(records[-HELDOUT:], ensure_ascii=False), encoding="utf-8")
    return train, heldout


def run_tutorial(model: str, data: Path, out: Path, max_length: int, steps: int, batch: int, precision: str) -> dict:
    run(
        [
            sys.executable,
            str(HERE / "tutorial_recipe.py"),
            model,
            str(data),
            str(out),
            f"--max-length={max_length}",
            f"--steps={steps}",
            f"--batch-size={batch}",
            *(["--bf16"] if precision == "bf16" else []),
        ],
        env={**PLAIN_TORCH, "LD_PRELOAD": ""},
    )  # as a tutorial runs: glibc
    result = json.loads((out / "result.json").read_text())
    return {**result, "peak_bytes": result.get("peak_gpu_bytes", result["peak_rss_bytes"]), "adapter": out / "adapter"}


def run_llm_tuning(
    data: Path, out: Path, max_length: int, steps: int, batch: int, precision: str, extra: list[str], env: dict | None = None
) -> dict:
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    run(
        [
            sys.executable,
            "-m",
            "llm_tuning",
            "train",
            str(config),
            *COMMON,
            f"data.path={data}",
            f"train.output_dir={out}",
            f"data.max_length={max_length}",
            f"train.max_steps={steps}",
            f"train.batch_size={batch}",
            f"train.logging_steps={min(10, steps)}",
            *PRECISIONS[precision],
            *extra,
        ],
        env=env,
    )
    summary = json.loads((out / "run_summary.json").read_text())
    return {
        "train_tokens": summary["train_tokens"],
        "train_runtime_s": summary["train_runtime_s"],
        "peak_bytes": summary["peak_memory_bytes"],
        "final_loss": summary["loss_history"][-1]["loss"],
        "adapter": out,
        "malloc": summary["allocator"],
        "products": {part: summary["speed_choices"]["cpu_matmul"][part] for part in ("layers", "head")},
    }


def run(command: list[str], env: dict | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def heldout_loss(model: str, adapter: Path, heldout: Path, max_length: int) -> float:
    result = subprocess.run(
        [sys.executable, str(HERE / "heldout_loss.py"), model, str(adapter), str(heldout), f"--max-length={max_length}"],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["heldout_loss"]


def long_records(records: list[dict], count: int, min_chars: int) -> list[dict]:
    """Records whose answers are several answers joined, each longer than min_chars."""
    text = "\n\n".join(r["output"] for r in records)
    return [
        {"instruction": records[i]["instruction"], "input": "", "output": (text[i * 500 :] + text)[:min_chars]}
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--levers", action="store_true", help="also each lever alone, and with gradient checkpointing")
    parser.add_argument(
        "--only", action="append", metavar="TEXT", help="only llm-tuning's runs whose label contains TEXT (repeatable)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="N rounds of the variants, each followed by the tutorial again; ratios use each run's mean",
    )
    parser.add_argument(
        "--scaling", nargs="*", type=int, metavar="LENGTH", help="also these max lengths (none given: 256 to 2048)"
    )
    parser.add_argument("--scaling-only", action="store_true", help="the scaling runs alone, without the comparison")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="bf16: for a GPU")
    parser.add_argument("--output", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return

    from llm_tuning.models.resolve import resolve_model_path

    model = resolve_model_path("smollm2-135m")  # converted once into the llm-tuning cache
    work = Path(tempfile.mkdtemp(prefix="llm-tuning-speed-"))
    records = json.loads(DATA.read_text(encoding="utf-8"))
    train, heldout = split_records(records, work)

    sections = [] if args.scaling_only else [compare(args, model, work, train, heldout)]
    if args.scaling is not None or args.scaling_only:
        sections.append(scale(args.scaling or SCALING_LENGTHS, model, work, records, args.precision))

    scaling = None if args.scaling is None and not args.scaling_only else " ".join(["--scaling", *map(str, args.scaling or [])])
    command = " ".join(
        [
            "python benchmarks/speed_vs_tutorial.py",
            *(["--levers"] if args.levers else []),
            *([f"--steps {args.steps}"] if args.steps != 40 else []),
            *(f"--only '{only}'" for only in args.only or []),
            *([f"--repeat {args.repeat}"] if args.repeat > 1 else []),
            *([scaling] if scaling else []),
            *(["--scaling-only"] if args.scaling_only else []),
            *([f"--precision {args.precision}"] if args.precision != "fp32" else []),
        ]
    )
    publish(sections, args.output, command)


def publish(sections: list[str], output: Path | None, command: str) -> None:
    """Print the CPU line and `sections`; with `output`, write them there too, under the command that made them."""
    text = "\n\n".join([machine_line(), *sections])
    print("\n" + text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"Command: `{command}`\n\n{text}\n", encoding="utf-8")


def machine_line() -> str:
    """The CPU as /proc/cpuinfo names it (model name, family, model, vector instruction sets), and any limit on
    the instruction sets torch's kernels may use (ONEDNN_MAX_CPU_ISA and the like), for the results file."""
    from llm_tuning.speed.calibration import ISA_LIMITS, cpu_model

    limits = ", ".join(f"{name}={os.environ[name]}" for name in ISA_LIMITS if name in os.environ) or "none"
    return f"CPU: {cpu_model()}; {os.cpu_count()} cores; instruction-set limits: {limits}"


def compare(args, model: str, work: Path, train: Path, heldout: Path) -> str:
    """The tutorial and llm-tuning's variants on the 40-step work, alternating; the comparison table."""
    rows = []
    variants = list(LEVERS.items()) if args.levers or args.only else list(LEVERS.items())[:1]
    if args.only:
        variants = [(label, run_one) for label, run_one in variants if any(text in label for text in args.only)]
    # alternating: the tutorial first and again after each round of llm-tuning's variants
    for label, run_one in [("tutorial recipe", None), *[*variants, ("tutorial recipe", None)] * args.repeat]:
        out = work / f"run{len(rows)}"
        if run_one is None:
            result = run_tutorial(model, train, out, 384, args.steps, 4, args.precision)
        else:
            result = run_llm_tuning(train, out, 384, args.steps, 4, args.precision, *run_one)
        rows.append((label, result))
        report(rows[-1], model, heldout)
    return comparison_table(rows)


def scale(lengths: list[int], model: str, work: Path, records: list[dict], precision: str) -> str:
    """The tutorial and llm-tuning's defaults at each max length, 10 steps of micro-batch 1; the scaling table."""
    long_train = work / "long.json"
    long_train.write_text(json.dumps(long_records(records, 40, 12000), ensure_ascii=False), encoding="utf-8")
    scaling = []
    for length in lengths:
        tutorial = run_tutorial(model, long_train, work / f"tutorial-{length}", length, 10, 1, precision)
        ours = run_llm_tuning(long_train, work / f"ours-{length}", length, 10, 1, precision, [])
        scaling.append((length, tutorial, ours))
        print(
            f"max length {length}: tutorial {rate(tutorial):.0f} tok/s {mib(tutorial):.0f} MiB; "
            f"llm-tuning {rate(ours):.0f} tok/s {mib(ours):.0f} MiB",
            flush=True,
        )
    return scaling_table(scaling)


def rate(result: dict) -> float:
    return result["train_tokens"] / result["train_runtime_s"]


def mib(result: dict) -> float:
    return result["peak_bytes"] / 2**20


def report(row, model: str, heldout: Path) -> None:
    label, result = row
    result["heldout_loss"] = heldout_loss(model, result["adapter"], heldout, 384)
    print(
        f"{label:<48} {result['train_tokens']:>7} tokens {rate(result):7.1f} tok/s {mib(result):6.0f} MiB "
        f"loss {result['final_loss']:.4f} held-out {result['heldout_loss']:.4f}",
        flush=True,
    )


def comparison_table(rows) -> str:
    lines = [
        "| run | malloc, products | non-padding tokens | tokens/s | peak memory (MiB) | final train loss | held-out loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {label} | {libraries(r)} | {r['train_tokens']} | {rate(r):.1f} | {mib(r):.0f} | {r['final_loss']:.4f} | "
        f"{r['heldout_loss']:.4f} |"
        for label, r in rows
    ]
    tutorials = [r for label, r in rows if label == "tutorial recipe"]
    reference = {
        "rate": sum(map(rate, tutorials)) / len(tutorials),
        "mib": sum(map(mib, tutorials)) / len(tutorials),
        "heldout": sum(r["heldout_loss"] for r in tutorials) / len(tutorials),
    }
    lines += [
        "",
        f"Ratios against the tutorial recipe (mean of its {len(tutorials)} run(s)): targets tokens/s >= 2x, "
        "peak memory <= 0.6x, held-out loss <= +2%.",
        "",
        "| run | tokens/s | peak memory | held-out loss |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label in dict.fromkeys(label for label, _ in rows if label != "tutorial recipe"):  # each variant once, in order
        runs = [r for other, r in rows if other == label]
        mean = {
            "rate": sum(map(rate, runs)) / len(runs),
            "mib": sum(map(mib, runs)) / len(runs),
            "heldout": sum(r["heldout_loss"] for r in runs) / len(runs),
        }
        ratios = ", ".join(f"{rate(r) / reference['rate']:.2f}x" for r in runs)
        each = f" (mean of {len(runs)} runs: {ratios})" if len(runs) > 1 else ""
        lines.append(
            f"| {label}{each} | {mean['rate'] / reference['rate']:.2f}x | {mean['mib'] / reference['mib']:.2f}x | "
            f"{mean['heldout'] / reference['heldout'] - 1:+.1%} |"
        )
    return "\n".join(lines)


def libraries(result: dict) -> str:
    """Which malloc and which matrix products a run used; the tutorial's are glibc's and torch's."""
    products = result.get("products", {"layers": "torch", "head": "torch"})
    if products["layers"] == products["head"]:
        return f"{result.get('malloc', 'glibc')}, {products['layers']}"
    return f"{result.get('malloc', 'glibc')}, layers {products['layers']}, head {products['head']}"


def scaling_table(scaling) -> str:
    lines = [
        "Scaling (micro-batch 1, 10 steps, every sample fills max length):",
        "",
        "| max length | tutorial tokens/s | llm-tuning tokens/s | tutorial peak memory (MiB) | llm-tuning peak memory (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {length} | {rate(t):.1f} | {rate(o):.1f} | {mib(t):.0f} | {mib(o):.0f} |" for length, t, o in scaling]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
