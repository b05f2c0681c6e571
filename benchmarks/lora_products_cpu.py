"""How fast torch multiplies LoRA's own small products on this CPU, as autograd forms them and transposed (the form
`train.cpu_kernels` gives LoRA B's backward: speed/cpu_kernels.py, RankInputLinear). The speed benchmark's shapes:
SmolLM2-135M's hidden size 576, rank 8, LoRA on q_proj and v_proj (60 adapted layers), on random fp32 inputs; the
best of 3 interleaved rounds.

    python benchmarks/lora_products_cpu.py [--threads N] [--rows N]

`--threads 1 --rows 768` (the default) times what one part of the split step multiplies: one thread, two rows of
384 tokens.
"""

from __future__ import annotations

import argparse

import torch

from cpu_matmul import seconds_per_call
from speed_vs_tutorial import machine_line

HIDDEN, RANK, ADAPTED = 576, 8, 60
ROUNDS = 3


def products(rows: int) -> dict[str, tuple]:
    """Each of LoRA's products in a training step: (as autograd forms it, transposed or None), as callables."""
    x, grad = torch.randn(rows, HIDDEN), torch.randn(rows, HIDDEN)  # the layer's input; its output's gradient
    a, b = torch.randn(RANK, HIDDEN), torch.randn(HIDDEN, RANK)  # lora_A's and lora_B's weights
    t, grad_t = torch.randn(rows, RANK), torch.randn(rows, RANK)  # lora_A's output; its gradient
    return {
        "A forward, x @ A^T": (lambda: x.mm(a.t()), None),
        "B forward, t @ B^T": (lambda: t.mm(b.t()), None),
        "B's input gradient, grad @ B": (lambda: grad.mm(b), lambda: b.t().mm(grad.t()).t()),
        "B's weight gradient, grad^T @ t": (lambda: grad.t().mm(t), lambda: t.t().mm(grad).t()),
        "A's input gradient, grad_t @ A": (lambda: grad_t.mm(a), None),
        "A's weight gradient, grad_t^T @ x": (lambda: grad_t.t().mm(x), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch's threads (default 1, as a split part)")
    parser.add_argument("--rows", type=int, default=768, help="tokens per adapted layer (default 768)")
    args = parser.parse_args()
    if args.threads < 1 or args.rows < 1:
        parser.error("--threads and --rows take whole numbers of at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    forms = products(args.rows)
    best = {(name, i): float("inf") for name, pair in forms.items() for i, form in enumerate(pair) if form}
    for _ in range(ROUNDS):
        for name, i in best:
            best[name, i] = min(best[name, i], seconds_per_call(forms[name][i], 200))
    print(machine_line())
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rows} rows, rank {RANK}; best of {ROUNDS} rounds\n")
    print("| product | as autograd forms it (us) | transposed (us) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    before = after = 0.0
    for name, (_, transposed) in forms.items():
        plain = best[name, 0]
        flipped = best[name, 1] if transposed else plain
        before, after = before + plain, after + flipped
        cells = f"{flipped * 1e6:.0f} | {plain / flipped:.2f}x" if transposed else "- | -"
        print(f"| {name} | {plain * 1e6:.0f} | {cells} |")
    print(
        f"\nall six, per adapted layer: {before * 1e6:.0f} us as autograd forms them, {after * 1e6:.0f} us with B's backward "
        f"transposed; for {ADAPTED} layers per step: {ADAPTED * before * 1e3:.1f} ms against {ADAPTED * after * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
