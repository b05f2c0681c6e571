"""How fast this CPU runs the speed benchmark's matrix products, by library: torch's own (MKL on x86 wheels),
oneDNN (which torch also ships) and OpenBLAS (numpy's). Each product of one training step of the speed benchmark
(SmolLM2-135M, 4 rows x 384 tokens, LoRA on q,v) is timed alone, forward (x @ W.T) and backward (grad @ W), on
random fp32 inputs; the best of 3 interleaved rounds is kept, since this machine's speed drifts between runs.

    python benchmarks/cpu_matmul.py [--threads N] [--rows N]

`--threads 1 --rows 768` times what one part of the split step multiplies (docs/speed.md#the-step-split-over-the-cores):
one thread, two rows of 384 tokens.

A training step spends most of its time in these products (benchmarks/profile_step.py), so they bound its speed.
Timed alone they run faster than inside a step, where their inputs come cold from memory.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from llm_tuning.speed.cpu_matmul import threads

TOKENS = 4 * 384  # one micro-batch of the speed benchmark
LABELLED = 512  # one chunk of the LM head (train.loss_chunk_size)
HEAD_CHUNKS = 3  # the LM head's chunks in a micro-batch of TOKENS
LAYERS = 30
# (name, out features, in features, calls per step, rows): SmolLM2-135M's frozen projections, and the LM head chunks
PRODUCTS = [
    ("q_proj, o_proj", 576, 576, 2 * LAYERS, None),  # None: the micro-batch's tokens (--rows)
    ("k_proj, v_proj", 192, 576, 2 * LAYERS, None),
    ("gate_proj, up_proj", 1536, 576, 2 * LAYERS, None),
    ("down_proj", 576, 1536, LAYERS, None),
    ("LM head, 512 labels", 49152, 576, None, LABELLED),  # None: HEAD_CHUNKS per TOKENS, as many per token
]
ROUNDS = 3
LIBRARIES = ("torch (MKL)", "oneDNN", "OpenBLAS (numpy)")


def seconds_per_call(run, repeats: int) -> float:
    run()  # warm-up: library dispatch and, for oneDNN, building the kernel
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def libraries(x, w, grad):
    """Forward and backward of one frozen linear layer, per library; outputs preallocated where the library allows."""
    out, grad_x = torch.empty(x.shape[0], w.shape[0]), torch.empty_like(x)
    x_np, w_np, grad_np = x.numpy(), w.numpy(), grad.numpy()
    out_np, grad_x_np = out.numpy(), grad_x.numpy()
    linear = torch.ops.mkldnn._linear_pointwise
    return dict(
        zip(
            LIBRARIES,
            [
                (lambda: torch.mm(x, w.t(), out=out), lambda: torch.mm(grad, w, out=grad_x)),
                (lambda: linear(x, w, None, "none", [], ""), lambda: linear(grad, w.t(), None, "none", [], "")),
                (lambda: np.matmul(x_np, w_np.T, out=out_np), lambda: np.matmul(grad_np, w_np, out=grad_x_np)),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch's and OpenBLAS's threads (default: torch's own count)")
    parser.add_argument("--rows", type=int, default=TOKENS, help=f"tokens multiplied by each layer (default {TOKENS})")
    args = parser.parse_args()
    if (args.threads is not None and args.threads < 1) or args.rows < 1:
        parser.error("--threads and --rows take whole numbers of at least 1")
    with threads(args.threads or torch.get_num_threads()):
        time_products(args.rows)


def time_products(tokens: int) -> None:
    """The table of rates per product and library, and the step's products in all, for `tokens` rows per layer."""
    torch.manual_seed(0)
    step_seconds = dict.fromkeys(LIBRARIES, 0.0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}; GFLOP/s, best of {ROUNDS} "
        "rounds\n"
    )
    print("| product (rows x in -> out) | calls per step | " + " | ".join(f"{n} fwd | {n} bwd" for n in LIBRARIES) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in LIBRARIES) + " |")
    for label, out_features, in_features, calls, rows in PRODUCTS:
        rows = rows or tokens
        calls = calls or max(1, round(HEAD_CHUNKS * tokens / TOKENS))
        x, w, grad = torch.randn(rows, in_features), torch.randn(out_features, in_features), torch.randn(rows, out_features)
        flops = 2 * rows * in_features * out_features
        repeats = max(3, int(2e10 // flops))  # about 20 GFLOP per timing
        best = {name: [float("inf"), float("inf")] for name in LIBRARIES}
        for _ in range(ROUNDS):
            for name, passes in libraries(x, w, grad).items():
                for i, run in enumerate(passes):
                    best[name][i] = min(best[name][i], seconds_per_call(run, repeats))
        cells = " | ".join(f"{flops / t / 1e9:.0f}" for name in LIBRARIES for t in best[name])
        print(f"| {label} ({rows} x {in_features} -> {out_features}) | {calls} | {cells} |")
        for name in LIBRARIES:
            step_seconds[name] += calls * sum(best[name])
    base = step_seconds[LIBRARIES[0]]
    print("\nall of them, as in one step (frozen weights: forward and input gradient):")
    for name in LIBRARIES:
        print(f"  {name:18s} {step_seconds[name]:5.2f} s  ({base / step_seconds[name]:.2f}x torch's speed)")


if __name__ == "__main__":
    main()
