"""How fast torch's CPU flash attention runs the speed benchmark's attention: SmolLM2-135M's heads (9 query heads
sharing 3 key/value heads, head dim 64), causal, one sample per call as packed attention calls it
(speed/packed_attention.py), forward and backward, on random fp32 inputs, at the sample lengths given.

    python benchmarks/attention_cpu.py [--threads N] [--lengths 64 128 ...]

One thread by default, as each part of the split step computes. FLOPs are counted as benchmarks/lora_mfu.py counts
attention (the causal half of the square; forward 1/3, backward 2/3), so the rates compare with the matrix
products' (`python benchmarks/cpu_matmul.py --threads 1 --rows 768`). Each figure is the median of its calls over 3
interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.functional import scaled_dot_product_attention

from lora_mfu import SHAPES, flops_per_token

SHAPE = SHAPES["smollm2-135m"]
HEADS, KV_HEADS, HEAD_DIM = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"], SHAPE["head_dim"]
ROUNDS = 3


def attention_flops(length: int) -> float:
    """Forward and backward FLOPs of one layer's causal attention over a sample, as lora_mfu.py counts them."""
    return flops_per_token(SHAPE, length)["attention"] * length / SHAPE["num_hidden_layers"]


def timed_calls(length: int, calls: int) -> tuple[list[float], list[float]]:
    """Seconds of `calls` forward passes and of their backward passes, on fresh inputs each."""
    forward, backward = [], []
    for _ in range(calls):
        q = torch.randn(1, HEADS, length, HEAD_DIM, requires_grad=True)
        k, v = (torch.randn(1, KV_HEADS, length, HEAD_DIM, requires_grad=True) for _ in range(2))
        grad = torch.randn(1, HEADS, length, HEAD_DIM)
        started = time.perf_counter()
        out = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        middle = time.perf_counter()
        out.backward(grad)
        forward.append(middle - started)
        backward.append(time.perf_counter() - middle)
    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch's threads (default 1, as a split part)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 192, 256, 384], help="sample lengths")
    args = parser.parse_args()
    if args.threads < 1 or min(args.lengths) < 1:
        parser.error("--threads and --lengths take whole numbers of at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = {length: ([], []) for length in args.lengths}
    for _ in range(ROUNDS):
        for length in args.lengths:
            timed_calls(length, 2)  # warm-up
            forward, backward = timed_calls(length, max(10, 2000 // length))
            times[length][0].extend(forward)
            times[length][1].extend(backward)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of each call, {ROUNDS} rounds\n")
    print("| sample length | forward (ms) | forward GFLOP/s | backward (ms) | backward GFLOP/s | both GFLOP/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for length, (forward, backward) in times.items():
        flops, f, b = attention_flops(length), statistics.median(forward), statistics.median(backward)
        print(
            f"| {length} | {f * 1e3:.2f} | {flops / 3 / f / 1e9:.1f} | {b * 1e3:.2f} | {2 * flops / 3 / b / 1e9:.1f} | "
            f"{flops / (f + b) / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
