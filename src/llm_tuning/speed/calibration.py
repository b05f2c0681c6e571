"""`train.cpu_matmul: auto` means the fastest library here, measured, not a rule written for one CPU.

At start-up the frozen layers' own product shapes (forward and input gradient, at the run's tokens per micro-batch,
capped) are timed with torch's products (MKL on x86) and with oneDNN, interleaved, best of a few rounds; oneDNN is
chosen only when it is clearly faster. The answer is cached per CPU model, instruction-set limits, torch version,
thread count, allocator and shapes (files.cache_dir()/speed), so a later run on the same machine measures nothing.
Which library won, and why, goes into the run summary's `speed_choices`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import UserError
from ..files import cache_dir, write_json
from .allocator import active_allocator
from .cpu_matmul import is_frozen_cpu_linear, onednn_linear

ROUNDS = 3
MAX_ROWS = 512  # enough rows for the kernels' own speed; more only lengthens the start-up
MARGIN = 0.97  # oneDNN must take less than 97% of torch's time: ties and noise keep torch's default path
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def choose_cpu_matmul(model, setting: str, tokens: int) -> dict:
    """{"library": "torch" | "onednn", "why": ...} for `train.cpu_matmul` = `setting` on this model and machine."""
    if setting != "auto":
        return {"library": setting, "why": f"train.cpu_matmul={setting}"}
    shapes = Counter(tuple(m.weight.shape) for m in model.modules() if is_frozen_cpu_linear(m))
    if not shapes:
        return {"library": "torch", "why": "no frozen float32 linear layers on the CPU"}
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return {"library": "torch", "why": f"oneDNN's products are not offered on {platform.machine()}"}
    rows = max(1, min(tokens, MAX_ROWS))
    key = machine_key(shapes, rows)
    cache = cache_dir() / "speed" / "cpu_matmul.json"
    known = _read(cache)
    if key in known:
        return {**known[key], "why": known[key]["why"] + " (measured before on this CPU, cached)"}
    seconds = measure(shapes, rows)
    faster = seconds["onednn"] < MARGIN * seconds["torch"]
    choice = {
        "library": "onednn" if faster else "torch",
        "why": f"measured on the model's {len(shapes)} product shapes ({rows} rows): oneDNN {seconds['onednn'] * 1e3:.1f} ms, "
        f"torch {seconds['torch'] * 1e3:.1f} ms per step's worth ({seconds['torch'] / seconds['onednn']:.2f}x)",
        "seconds": seconds,
    }
    _write(cache, {**known, key: choice})
    return choice


def measure(shapes: Counter, rows: int) -> dict[str, float]:
    """Seconds each library takes for every frozen layer's forward and input-gradient product, best of ROUNDS."""
    generator = torch.Generator().manual_seed(0)
    best = {"torch": [float("inf")] * len(shapes), "onednn": [float("inf")] * len(shapes)}
    tensors = []
    for out_features, in_features in shapes:
        weight = torch.randn(out_features, in_features, generator=generator)
        tensors.append(
            (torch.randn(rows, in_features, generator=generator), weight, torch.randn(rows, out_features, generator=generator))
        )
    products = {
        "torch": lambda x, w, g: (F.linear(x, w), torch.mm(g, w)),
        "onednn": lambda x, w, g: (onednn_linear(x, w), onednn_linear(g, w.t())),
    }
    for _ in range(ROUNDS + 1):  # the first round warms the libraries up (dispatch, oneDNN's kernels)
        for library, product in products.items():
            for index, (x, w, g) in enumerate(tensors):
                started = time.perf_counter()
                product(x, w, g)
                best[library][index] = min(best[library][index], time.perf_counter() - started)
    counts = list(shapes.values())
    return {library: sum(t * n for t, n in zip(times, counts)) for library, times in best.items()}


def machine_key(shapes: Counter, rows: int) -> str:
    """What the measurement depends on: the CPU and its instruction-set limits, torch, threads, malloc, shapes."""
    parts = {
        "cpu": cpu_model(),
        "limits": {name: os.environ.get(name) for name in ISA_LIMITS},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": active_allocator(),
        "shapes": sorted([list(shape), count] for shape, count in shapes.items()),
        "rows": rows,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cpu_model() -> str:
    """The CPU's model name and its vector instruction sets, as Linux reports them."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())  # the first processor's
    flags = sorted(flag for flag in fields.get("flags", "").split() if flag.startswith(("avx", "amx", "fma")))
    return " ".join(
        [fields.get("model name", "?"), "family", fields.get("cpu family", "?"), "model", fields.get("model", "?"), *flags]
    )


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write(path: Path, value: dict) -> None:
    """Best effort: a cache that cannot be written only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, value)
    except (OSError, UserError):
        pass
