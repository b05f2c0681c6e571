"""Which library makes the speed benchmark's training pass faster, timed as `train.cpu_matmul=auto` times it
(speed/calibration.py): forward and backward of the first rows of the first micro-batch through the Trainer's own
loss, each combination of torch's products (MKL) and oneDNN's for the layers and the LM head alternating, after a
pass that warms up, with all of torch's threads (an unsplit step; `auto` times one pass per library and each part
of it apart). Each row of the table is a number of rows of that micro-batch; `auto` measures the rows that fit in
calibration.MAX_TOKENS.

    python benchmarks/step_matmul.py [--rounds 3] [--output FILE]

The same work as benchmarks/speed_vs_tutorial.py (SmolLM2-135M, LoRA r8 on q,v, max length 384, micro-batch 4,
fp32, on tcmalloc where installed). benchmarks/cpu_matmul.py times the same products alone, which can rank the
libraries the other way round. Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from speed_vs_tutorial import COMMON, DATA, publish, split_records

MAX_LENGTH, BATCH = 384, 4


def time_passes(rounds: int) -> list[dict]:
    """One llm-tuning run of a single step whose library choice is replaced by timing passes of 1 to BATCH rows."""
    from llm_tuning.speed import calibration
    from llm_tuning.speed.cpu_matmul import everywhere
    from llm_tuning.training import run as training
    from llm_tuning.training.trainer import first_batch_pass

    work = Path(tempfile.mkdtemp(prefix="llm-tuning-step-matmul-"))
    train, _ = split_records(json.loads(DATA.read_text(encoding="utf-8")), work)
    rows = []
    combinations = {
        f"layers {layers}, head {head}": {"layers": layers, "head": head}
        for layers in ("torch", "onednn")
        for head in ("torch", "onednn")
    }

    def timed_choice(trainer, model, *_):  # in place of cpu_matmul_choice: its own pass and tokens are not used
        for count in range(1, BATCH + 1):
            one_pass, tokens = first_batch_pass(trainer, count * MAX_LENGTH)
            seconds = [calibration.measure(model, one_pass, combinations) for _ in range(rounds)]
            best = {name: min(sum(s[name].values()) for s in seconds) for name in seconds[0]}  # layers + head
            rows.append({"rows": count, "tokens": tokens, "seconds": best})
            print(f"  {count} row(s): {best}", file=sys.stderr, flush=True)
        return {**everywhere("torch"), "why": "benchmarks/step_matmul.py"}

    training.cpu_matmul_choice = timed_choice
    overrides = [*COMMON, f"data.path={train}", f"train.output_dir={work / 'run'}", f"data.max_length={MAX_LENGTH}"]
    training.train({}, [*overrides, f"train.batch_size={BATCH}", "train.max_steps=1"])
    return rows


def table(rows: list[dict], rounds: int) -> str:
    from llm_tuning.speed.calibration import MARGIN, MAX_TOKENS, ROUNDS

    names = list(rows[0]["seconds"])
    lines = [
        f"Seconds per training pass (forward and backward), best of {rounds} medians of {ROUNDS} alternating passes per "
        "combination of libraries for the layers and the LM head (torch: MKL):",
        "",
        f"| rows x 384 tokens | {' | '.join(names)} | `auto` would choose |",
        f"| --- |{' ---: |' * len(names)} --- |",
    ]
    for row in rows:
        measured = " (what `auto` measures)" if row["tokens"] <= MAX_TOKENS < row["tokens"] + MAX_LENGTH else ""
        timings = " | ".join(f"{row['seconds'][name]:.3f}" for name in names)
        lines.append(f"| {row['rows']} ({row['tokens']} tokens){measured} | {timings} | {fastest(row['seconds'], MARGIN)} |")
    return "\n".join(lines)


def fastest(seconds: dict[str, float], margin: float) -> str:
    """The fastest combination, if clearly faster than torch's products everywhere, as `auto` decides."""
    plain, best = "layers torch, head torch", min(seconds, key=seconds.get)
    return best if seconds[best] < margin * seconds[plain] else plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="calls of the calibration's measurement per row count")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return

    from llm_tuning.speed.allocator import restart_with_preferred_allocator

    restart_with_preferred_allocator()  # on tcmalloc where installed, as the llm-tuning command trains
    rounds = f" --rounds {args.rounds}" if args.rounds != 3 else ""
    publish([table(time_passes(args.rounds), args.rounds)], args.output, f"python benchmarks/step_matmul.py{rounds}")


if __name__ == "__main__":
    main()
