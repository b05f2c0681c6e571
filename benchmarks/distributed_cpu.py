"""What data parallelism costs where the cores are the same: the speed benchmark's LoRA work (speed_vs_tutorial.py:
SmolLM2-135M, LoRA r=8 on q_proj,v_proj, 720 Chinese Alpaca records, max length 384, 40 steps of 4 packed rows, fp32)
in one process with all the cores against `llm-tuning train --nproc N` with the cores divided between N processes
(micro-batch 4 / N each: the same rows per step, gloo on loopback).

    python benchmarks/distributed_cpu.py [--steps 40] [--output benchmarks/results/distributed_cpu.md]

Printed per run: non-padding tokens/s of the whole job, peak RSS per process and in total, the final training loss
(mean of the last 10 steps' log) and the loss on the 80 held-out records. Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kill_resume import cpu_name
from speed_vs_tutorial import COMMON, DATA, HERE, heldout_loss, split_records

BATCH = 4  # rows per optimizer step, divided between the processes


def train(data: Path, out: Path, steps: int, processes: int) -> dict:
    cores = os.cpu_count() or 1
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    command = [sys.executable, "-m", "llm_tuning", "train", str(config), "--nproc", str(processes), *COMMON]
    command += [f"data.path={data}", f"train.output_dir={out}", "data.max_length=384", f"train.max_steps={steps}"]
    command += [f"train.batch_size={BATCH // processes}", "train.logging_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    losses = [entry["loss"] for entry in summary["loss_history"]][-10:]
    return {
        "label": f"{processes} process{'es' if processes > 1 else ''} x {max(1, cores // processes)} threads",
        "tokens_per_s": summary["train_tokens"] / summary["train_runtime_s"],
        "peaks": summary["peak_memory_bytes_per_process"],
        "final_loss": sum(losses) / len(losses),
        "adapter": out,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| run | non-padding tokens/s | peak RSS per process (MiB) | peak RSS, all processes (MiB) | final train loss | "
        "held-out loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        per_process = " / ".join(f"{peak / 2**20:.0f}" for peak in r["peaks"])
        lines.append(
            f"| {r['label']} | {r['tokens_per_s']:.1f} | {per_process} | {sum(r['peaks']) / 2**20:.0f} | "
            f"{r['final_loss']:.4f} | {r['heldout']:.4f} |"
        )
    one, many = rows[0], rows[-1]
    lines += [
        "",
        f"{many['label']} against {one['label']}: {many['tokens_per_s'] / one['tokens_per_s']:.2f}x the tokens/s, "
        f"{sum(many['peaks']) / sum(one['peaks']):.2f}x the memory in total, held-out loss "
        f"{100 * (many['heldout'] / one['heldout'] - 1):+.2f}%.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default 2)")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return
    from llm_tuning.models.resolve import resolve_model_path

    model = resolve_model_path("smollm2-135m")
    work = Path(tempfile.mkdtemp(prefix="llm-tuning-distributed-"))
    train_file, heldout = split_records(json.loads(DATA.read_text(encoding="utf-8")), work)
    rows = []
    for processes in (1, args.nproc):
        row = train(train_file, work / f"run{processes}", args.steps, processes)
        row["heldout"] = heldout_loss(model, row["adapter"], heldout, 384)
        print(f"{row['label']}: {row['tokens_per_s']:.1f} tokens/s, held-out loss {row['heldout']:.4f}", flush=True)
        rows.append(row)
    flags = "AVX-512" if "avx512f" in Path("/proc/cpuinfo").read_text() else "AVX2, no AVX-512"
    text = f"CPU: {cpu_name()} ({os.cpu_count()} cores, {flags})\n\n{table(rows)}"
    print("\n" + text)
    if args.output:
        command = f"python benchmarks/distributed_cpu.py --steps {args.steps} --nproc {args.nproc}"
        args.output.write_text(f"Command: `{command}`\n\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
