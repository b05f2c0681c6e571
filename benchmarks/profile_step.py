"""Where one training step's time goes: the speed benchmark's llm-tuning run (defaults), profiled on its third
step with torch's profiler, as matrix products (torch's and oneDNN's, with their FLOPs), attention, dropout masks
and the rest.

    python benchmarks/profile_step.py [extra overrides ...]

The profiler adds its own overhead to the many small ops, so the step is slower than unprofiled; the matrix
products, few and large, are timed about right. Skips (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from speed_vs_tutorial import COMMON, DATA, split_records

PROFILED_STEP = 3
MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise")  # the last: oneDNN's (cpu_matmul.py)


def profile_step(original):
    """Wrap LeanTrainer.training_step so that step PROFILED_STEP runs under torch's profiler."""
    import torch

    calls = {"count": 0}

    def training_step(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] != PROFILED_STEP:
            return original(self, *args, **kwargs)
        started = time.perf_counter()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True, record_shapes=True
        ) as profiler:
            loss = original(self, *args, **kwargs)
        wall = time.perf_counter() - started
        report(profiler.key_averages(group_by_input_shape=True), wall)
        return loss

    return training_step


def report(events, wall: float) -> None:
    def seconds(match) -> float:
        return sum(e.self_cpu_time_total for e in events if match(e.key)) / 1e6

    products = seconds(lambda key: key in MATRIX_PRODUCTS)
    flops = sum(product_flops(e) for e in events if e.key in MATRIX_PRODUCTS)
    attention = seconds(lambda key: "scaled_dot_product" in key or key.startswith("PackedAttention"))  # torch's; ours in C
    masks = seconds(lambda key: "bernoulli" in key)
    total = seconds(lambda key: True)
    print(f"profiled step {PROFILED_STEP}: {wall:.2f} s wall, {total:.2f} s in ops")
    print(f"  matrix products   {products:6.2f} s  {flops / 1e9:6.0f} GFLOP  {flops / 1e9 / products:5.0f} GFLOP/s")
    print(f"  attention         {attention:6.2f} s")
    print(f"  dropout masks     {masks:6.2f} s")
    print(f"  everything else   {total - products - attention - masks:6.2f} s")


def product_flops(event) -> float:
    """The profiler's FLOPs for torch's products; for oneDNN's linear (x @ w.T, which it does not count), 2 x M x N x K
    from the recorded shapes of x and w."""
    if event.key != "mkldnn::_linear_pointwise":
        return event.flops
    x, w = event.input_shapes[:2]
    rows = 1
    for size in x[:-1]:
        rows *= size
    return 2 * rows * w[0] * w[1] * event.count


def main() -> None:
    if not DATA.is_file():
        print(f"skipped: {DATA} not found")
        return
    from llm_tuning.speed.allocator import restart_with_preferred_allocator

    restart_with_preferred_allocator()  # on tcmalloc where installed, as the llm-tuning command trains
    from llm_tuning.training import run as training
    from llm_tuning.training import trainer

    work = Path(tempfile.mkdtemp(prefix="llm-tuning-profile-"))
    train, _ = split_records(json.loads(DATA.read_text(encoding="utf-8")), work)
    trainer.LeanTrainer.training_step = profile_step(trainer.LeanTrainer.training_step)
    training.train(
        {},
        [
            *COMMON,
            f"data.path={train}",
            f"train.output_dir={work / 'run'}",
            "data.max_length=384",
            f"train.max_steps={PROFILED_STEP}",
            "train.batch_size=4",
            *sys.argv[1:],
        ],
    )


if __name__ == "__main__":
    main()
