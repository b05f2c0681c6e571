"""What the chunk size of the chunked loss (`train.loss_chunk_size`) costs and gives: the loss's forward and
backward (training/loss.py: the LM head and cross-entropy on labelled positions only, a chunk at a time) on the
speed benchmark's micro-batch, 4 rows of 384 tokens with SmolLM2-135M's head (vocabulary 49,152 x 576) and 7/8 of
the positions labelled, through torch's products (MKL) and oneDNN's, chunk sizes alternating.

    python benchmarks/loss_chunk.py [--rounds 3] [--output FILE]

The head's weights are random: the time of a product does not depend on its values. Runs on tcmalloc where
installed, as the llm-tuning command trains; oneDNN's path is the one `auto` takes there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from speed_vs_tutorial import publish

ROWS, LENGTH, HIDDEN, VOCABULARY = 4, 384, 576, 49152
CHUNK_SIZES = (256, 512, 1024, 1536)
LIBRARIES = ("torch", "onednn")


def time_chunk_sizes(rounds: int) -> dict:
    """Best seconds of one forward and backward of the loss, per (library, chunk size)."""
    import torch
    from torch import nn

    from llm_tuning.speed.cpu_matmul import everywhere, multiply_as
    from llm_tuning.training.loss import labelled_loss

    torch.manual_seed(0)
    model = nn.Module()
    model.head = nn.Linear(HIDDEN, VOCABULARY, bias=False).requires_grad_(False)
    hidden = torch.randn(ROWS, LENGTH, HIDDEN, requires_grad=True)
    labels = torch.randint(0, VOCABULARY, (ROWS, LENGTH))
    labels[:, : LENGTH // 8] = -100  # the prompt
    best = {}
    for round_ in range(rounds + 1):  # the first round warms up
        for library in LIBRARIES:
            multiply_as(model, everywhere(library))  # a model without an LM head: its one linear layer is "layers"
            for chunk in CHUNK_SIZES:
                started = time.perf_counter()
                labelled_loss(hidden, model.head, labels, None, chunk).backward()
                seconds = time.perf_counter() - started
                if round_:
                    best[library, chunk] = min(seconds, best.get((library, chunk), seconds))
        print(f"  round {round_} done", file=sys.stderr, flush=True)
    return best


def table(best: dict, rounds: int) -> str:
    lines = [
        f"Seconds per forward and backward of the loss, best of {rounds} rounds ({ROWS} x {LENGTH} tokens, "
        f"{ROWS * LENGTH * 7 // 8} labelled):",
        "",
        "| chunk size | chunk x vocabulary block | torch (MKL) | oneDNN |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for chunk in CHUNK_SIZES:
        block = chunk * VOCABULARY * 4 / 2**20
        lines.append(f"| {chunk} | {block:,.0f} MiB | {best['torch', chunk]:.3f} | {best['onednn', chunk]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over every chunk size and library")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    from llm_tuning.speed.allocator import restart_with_preferred_allocator

    restart_with_preferred_allocator()  # on tcmalloc where installed, as the llm-tuning command trains
    rounds = f" --rounds {args.rounds}" if args.rounds != 3 else ""
    publish([table(time_chunk_sizes(args.rounds), args.rounds)], args.output, f"python benchmarks/loss_chunk.py{rounds}")


if __name__ == "__main__":
    main()
