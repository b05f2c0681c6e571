"""How fast the speed benchmark's attention runs, in torch's CPU flash kernel and in the C kernel of
`train.cpu_kernels` (speed/cpu_kernels.py): SmolLM2-135M's heads (9 query heads sharing 3 key/value heads, head dim
64), causal, one sample per call, forward and backward, on random fp32 inputs laid out as transformers' attention
has them, at the sample lengths given; the C kernel at each block of query rows given.

    python benchmarks/attention_cpu.py [--threads N] [--lengths 64 128 ...] [--blocks 32 64 ...]

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

from llm_tuning.speed import cpu_kernels
from llm_tuning.speed.cpu_matmul import openblas_threads_as_torchs
from lora_mfu import SHAPES, flops_per_token

SHAPE = SHAPES["smollm2-135m"]
HEADS, KV_HEADS, HEAD_DIM = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"], SHAPE["head_dim"]
ROUNDS = 3


def attention_flops(length: int) -> float:
    """Forward and backward FLOPs of one layer's causal attention over a sample, as lora_mfu.py counts them."""
    return flops_per_token(SHAPE, length)["attention"] * length / SHAPE["num_hidden_layers"]


def flash(q, k, v):
    return scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def c_kernel(block: int):
    def attend(q, k, v):
        cpu_kernels.ATTENTION_BLOCK = block
        return cpu_kernels.packed_attention(q, k, v, [[q.shape[2]]], None)

    return attend


def timed_calls(attend, length: int, calls: int) -> tuple[list[float], list[float]]:
    """Seconds of `calls` forward passes and of their backward passes, on fresh inputs each."""
    forward, backward = [], []
    for _ in range(calls):
        # heads x tokens views of tokens x heads memory, as transformers' attention passes them
        q = torch.randn(1, length, HEADS, HEAD_DIM).transpose(1, 2).requires_grad_()
        k, v = (torch.randn(1, length, KV_HEADS, HEAD_DIM).transpose(1, 2).requires_grad_() for _ in range(2))
        started = time.perf_counter()
        out = attend(q, k, v)
        middle = time.perf_counter()
        out.backward(torch.ones_like(out))
        forward.append(middle - started)
        backward.append(time.perf_counter() - middle)
    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch's threads (default 1, as a split part)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 192, 256, 384], help="sample lengths")
    parser.add_argument("--blocks", type=int, nargs="+", default=[cpu_kernels.ATTENTION_BLOCK], help="the C kernel's")
    args = parser.parse_args()
    if args.threads < 1 or min(args.lengths + args.blocks) < 1:
        parser.error("--threads, --lengths and --blocks take whole numbers of at least 1")
    torch.set_num_threads(args.threads)
    openblas_threads_as_torchs()  # as training sets them: else the C kernel's products take OpenBLAS's own threads
    torch.manual_seed(0)
    kernels = {"torch flash": flash, **{f"C, block {block}": c_kernel(block) for block in args.blocks}}
    if args.threads != 1:  # the C kernel is single-threaded; packed_attention leaves more threads to torch
        kernels = {"torch flash": flash}
    times = {(name, length): ([], []) for name in kernels for length in args.lengths}
    for _ in range(ROUNDS):
        for (name, length), (forward, backward) in times.items():
            timed_calls(kernels[name], length, 2)  # warm-up
            f, b = timed_calls(kernels[name], length, max(10, 2000 // length))
            forward.extend(f)
            backward.extend(b)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of each call, {ROUNDS} rounds\n")
    print("| kernel | sample length | forward (ms) | forward GFLOP/s | backward (ms) | backward GFLOP/s | both GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (name, length), (forward, backward) in times.items():
        flops, f, b = attention_flops(length), statistics.median(forward), statistics.median(backward)
        print(
            f"| {name} | {length} | {f * 1e3:.2f} | {flops / 3 / f / 1e9:.1f} | {b * 1e3:.2f} | {2 * flops / 3 / b / 1e9:.1f} | "
            f"{flops / (f + b) / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
