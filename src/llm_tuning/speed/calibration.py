"""`train.cpu_matmul: auto` means the fastest library here, measured on the run's own training step, not on products
timed alone nor by a rule written for one CPU.

Before training, the start of the run's first micro-batch goes forward and backward through the model as training
computes it (as many rows and threads as each process computes: one thread and a part's rows where the step is split
over the cores), alternately with each library offered (torch's products, MKL on x86; oneDNN's; numpy's OpenBLAS, only
where a process computes with one thread: cpu_matmul.py); the median of a few passes, after one with each that warms it
up. Each pass is timed in two parts, for which the library is chosen apart: the model's LM head (from the decoder's last
hidden states to the loss, where the chunked loss also forms the head's gradients) and the layers (the rest); the head
is measured only with the libraries training would multiply it with (loss.py). Another library than torch's is chosen
only when it is clearly faster, and only after its products with the model's own weights have matched exact ones: a
library that misses them (some BLAS builds miscompute on CPUs newer than they know) is left out, and `why` says so.
Products timed alone mislead: on an AMD Zen 4 limited to AVX2, oneDNN multiplies the layers' shapes faster alone and
runs the step slower; and on a Zen 3, where split steps run 1.1x as fast on OpenBLAS as on MKL, passes of one row that
timed each part in turn, the other on MKL, ranked them about equal (docs/speed.md). The passes leave the training as
they found it (random state, gradients, train/eval mode), so a run that measures computes exactly what a run that found
the answer cached does. The answer is cached per CPU model, instruction-set limits, torch and numpy versions, threads,
allocator, libraries offered, the model's product shapes and the tokens measured, to the next power of two
(files.cache_dir()/speed), so a later run on the same machine measures nothing. Which libraries won, and why, goes into
the run summary's `speed_choices`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import cache_dir, write_json
from .allocator import active_allocator
from .cpu_matmul import (
    PARTS,
    everywhere,
    frozen_linears,
    multiply_as,
    offered_libraries,
    product_error,
    threads,
    use_torch_matmul,
)

ROUNDS = 3  # the median of three: one pass that a quiet moment made fast decides nothing
MAX_TOKENS = 1024  # per process: two rows of 384 tokens rank the libraries as four do (benchmarks/step_matmul.py)
MARGIN = 0.97  # another library must take less than 97% of torch's time: ties and noise keep torch's default path
MAX_ERROR = 1e-3  # of a product's largest magnitude: fp32 rounding stays near 1e-6 here, a miscomputing BLAS far above
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")


def choose_cpu_matmul(
    model,
    setting: str,
    one_pass: Callable[[], float],
    tokens: int,
    cpu_fp32: bool = True,
    head_follows: Callable[[str], bool] = lambda library: True,
    threads_per_pass: int | None = None,
) -> dict:
    """{"layers": library, "head": library, "why": ...}: which library (of cpu_matmul.LIBRARIES) multiplies the model's
    frozen linear layers, and which its LM head, for `train.cpu_matmul` = `setting` on this model and machine;
    `one_pass` runs a forward and backward pass of `tokens` tokens as training does and returns the seconds the LM
    head's part of it took; `cpu_fp32`: training computes in fp32 on the CPU (elsewhere the other libraries are not
    used, and nothing is measured); `head_follows(library)`: whether training multiplies the head with `library`
    where chosen for it (loss.head_follows_cpu_matmul); `threads_per_pass`: the threads a process computes a training
    pass with (default torch's count)."""
    if setting != "auto":
        return {**everywhere(setting), "why": f"train.cpu_matmul={setting}"}
    if not cpu_fp32:
        return {**everywhere("torch"), "why": "training does not compute in fp32 on the CPU"}
    threads_per_pass = threads_per_pass or torch.get_num_threads()
    parts = frozen_linears(model)
    if not parts:
        return {**everywhere("torch"), "why": "no frozen float32 linear layers on the CPU"}
    candidates = candidate_libraries(parts, head_follows, threads_per_pass)
    if not candidates:
        return {**everywhere("torch"), "why": f"no library but torch's is offered on {platform.machine()} here"}
    shapes = Counter(tuple(m.weight.shape) for found in parts.values() for m in found)
    key = machine_key(shapes, tokens, threads_per_pass, candidates)
    cache = cache_dir() / "speed" / "cpu_matmul.json"
    known = _read(cache)
    if key in known:
        return {**known[key], "why": known[key]["why"] + " (measured before on this CPU, cached)"}
    started = time.perf_counter()
    wrong = wrong_libraries(parts, candidates)
    candidates = candidate_libraries(parts, head_follows, threads_per_pass, left_out=wrong)
    libraries = list(dict.fromkeys(library for measured in candidates.values() for library in measured))
    with threads(threads_per_pass):
        timed = measure(model, one_pass, {library: passes_with(library, candidates) for library in libraries})
    seconds = {part: {library: timed[library][part] for library in measured} for part, measured in candidates.items()}
    timings = "; ".join(
        f"{part}: " + ", ".join(f"{library} {value:.3f} s" for library, value in measured.items())
        for part, measured in seconds.items()
    )
    thread_count = f"{threads_per_pass} thread" + ("s" if threads_per_pass > 1 else "")
    left_out = ", ".join(f"{library} (relative error {error:.1e})" for library, error in wrong.items())
    choice = {
        **everywhere("torch"),
        **{part: fastest(measured) for part, measured in seconds.items()},
        "why": f"measured on a training pass (forward and backward) of {tokens} tokens of the first batch, with "
        f"{thread_count}, each part timed apart: {timings or 'torch alone'}"
        + (f"; left out, as their products differ from torch's here: {left_out}" if wrong else ""),
        "seconds": seconds,
    }
    _write(cache, {**known, key: choice})
    return {**choice, "why": choice["why"] + f"; measuring took {time.perf_counter() - started:.1f} s"}


def candidate_libraries(
    parts: dict, head_follows: Callable[[str], bool], threads_per_pass: int, left_out=()
) -> dict[str, list[str]]:
    """The libraries to measure for each of `parts` (frozen_linears' answer): those offered here (OpenBLAS only with
    one thread per process) but those `left_out`; for the head, those training would multiply it with. A part with
    torch's alone is not measured."""
    offered = [
        library for library in offered_libraries() if library not in left_out and (library != "openblas" or threads_per_pass == 1)
    ]
    candidates = {part: [lib for lib in offered if part != "head" or head_follows(lib)] for part in parts}
    return {part: libraries for part, libraries in candidates.items() if len(libraries) > 1}


def wrong_libraries(parts: dict, candidates: dict[str, list[str]]) -> dict[str, float]:
    """{library: its largest relative error} for each library but torch's in `candidates` whose products with one
    weight of each shape in `parts` (frozen_linears' answer) miss the exact ones by more than MAX_ERROR."""
    weights = {tuple(m.weight.shape): m.weight for found in parts.values() for m in found}
    libraries = {library for measured in candidates.values() for library in measured} - {"torch"}
    errors = {library: max(product_error(library, weight) for weight in weights.values()) for library in sorted(libraries)}
    return {library: error for library, error in errors.items() if error > MAX_ERROR}


def passes_with(library: str, candidates: dict[str, list[str]]) -> dict[str, str]:
    """The library of each part in the passes that time `library`: torch's for a part it is not measured for."""
    return {part: library if library in candidates.get(part, ()) else "torch" for part in PARTS}


def fastest(seconds: dict[str, float]) -> str:
    """The fastest library of those timed (by name), if clearly faster than torch's products; else "torch"."""
    best = min(seconds, key=seconds.get)
    return best if seconds[best] < MARGIN * seconds["torch"] else "torch"


def measure(model, one_pass: Callable[[], float], candidates: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Seconds of each part of `one_pass` (which returns the head's) with each of `candidates` (name: the library of
    each part, as multiply_as takes it): the median of ROUNDS rounds that alternate them, after a round that warms each
    up (the allocator's pools, oneDNN's kernels, OpenBLAS's buffers), so that no library's first use is timed. The
    model multiplies with torch's products afterwards."""
    passes = {name: [] for name in candidates}
    with training_untouched(model):
        for round_ in range(ROUNDS + 1):
            for name, config in candidates.items():
                multiply_as(model, config)
                started = time.perf_counter()
                head = one_pass()
                if round_:
                    passes[name].append({"layers": time.perf_counter() - started - head, "head": head})
    return {
        name: {part: statistics.median(timed[part] for timed in timings) for part in PARTS} for name, timings in passes.items()
    }


@contextmanager
def training_untouched(model):
    """Passes inside leave no trace on the training to come: the random state (dropout draws from it), the gradients
    and the train/eval mode are as before, and the model multiplies with torch's products again; inside, it is in
    training mode, as in a training step."""
    was_training = model.training
    grads = {p: p.grad for p in model.parameters() if p.requires_grad}
    for parameter in grads:
        parameter.grad = None  # or the passes' backward would add into the gradients kept
    model.train()
    with torch.random.fork_rng(devices=[]):  # CPU passes: only the CPU generator is drawn from
        try:
            yield
        finally:
            use_torch_matmul(model)
            for parameter, grad in grads.items():
                parameter.grad = grad
            model.train(was_training)


def machine_key(shapes: Counter, tokens: int, threads_per_pass: int, candidates: dict) -> str:
    """What the measurement depends on: the CPU and its instruction-set limits, torch, numpy, threads, malloc, the
    libraries measured, the model's product shapes and about how many tokens were measured."""
    parts = {
        "cpu": cpu_model(),
        "limits": {name: os.environ.get(name) for name in ISA_LIMITS},
        "torch": torch.__version__,
        "numpy": np.__version__,  # numpy's wheels ship OpenBLAS: another build is checked and timed afresh
        "threads": threads_per_pass,
        "allocator": active_allocator(),
        "candidates": candidates,
        "shapes": sorted([list(shape), count] for shape, count in shapes.items()),
        "tokens": 1 << (tokens - 1).bit_length(),  # to the next power of two: unpacked batches vary in width
        "measured": "training pass, parts timed apart",  # earlier versions' answers (each part in turn) are not reused
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
