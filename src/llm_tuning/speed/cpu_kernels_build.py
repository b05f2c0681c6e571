"""Building and loading the C kernels of `train.cpu_kernels` (cpu_kernels.c; what they compute: cpu_kernels.py).

The library is built at the first run with the system's C compiler (CC, else cc, gcc or clang), tuned for this CPU
(and for ATEN_CPU_CAPABILITY's limit where one is set), and cached in the cache folder under a name that hashes the
source, the flags, the compiler and the CPU, so a later run loads it in a millisecond. Packed attention multiplies
through numpy's OpenBLAS, whose cblas_sgemm the library is handed at loading.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path

from threadpoolctl import threadpool_info

from ..errors import UserError
from ..files import PARTIAL_SUFFIX, cache_dir, move_into_place
from .calibration import cpu_model

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# no -ffast-math: IEEE arithmetic throughout; only errno and traps are given up, which lets the loops vectorise
FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
# torch's own limit on the instruction sets its kernels use (docs/speed.md): ours keep to it too
ISA_FLAGS = {"default": ["-mno-avx"], "avx2": ["-mno-avx512f"]}
FLOAT, SIZE, INT = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int64  # tensors go by address
SIGNATURES = {  # name: (argument types, result type)
    "silu_product_forward": ([FLOAT] * 3 + [SIZE], None),
    "silu_product_backward": ([FLOAT] * 5 + [SIZE], None),
    "rms_norm_forward": ([FLOAT] * 4 + [SIZE, SIZE, ctypes.c_float], None),
    "rms_norm_backward": ([FLOAT] * 6 + [SIZE, SIZE], None),
    "dropout_apply": ([FLOAT, FLOAT, ctypes.c_float, FLOAT, SIZE], None),
    "set_sgemm": ([FLOAT], None),
    "packed_attention_forward": ([FLOAT] * 6 + [INT] * 6 + [ctypes.c_float], ctypes.c_int),
    "packed_attention_backward": ([FLOAT] * 10 + [INT] * 6 + [ctypes.c_float], ctypes.c_int),
    "cross_entropy_gradient": ([FLOAT, FLOAT, SIZE, SIZE], ctypes.c_double),
}


def c_compiler() -> str | None:
    """CC if set (None when it names nothing on PATH), else the first of cc, gcc and clang found."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def compile_flags() -> list[str]:
    tuning = ["-march=native"] if platform.machine() in ("x86_64", "AMD64", "i686") else ["-mcpu=native"]
    limit = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    return FLAGS + tuning + (ISA_FLAGS.get(limit, []) if "-march=native" in tuning else [])


def library_path(compiler: str, flags: list[str]) -> Path:
    identity = "\n".join([SOURCE.read_text(encoding="utf-8"), compiler, *flags, cpu_model()])
    return cache_dir() / "kernels" / f"cpu_kernels-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.so"


def build(compiler: str, flags: list[str], target: Path) -> None:
    """Compile the kernels into `target`, written whole (a run that dies midway leaves no half library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial_file = target.with_name(f"{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")  # as files.write_file_whole names it
    try:
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(partial_file)], capture_output=True, text=True)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise UserError(f"config key 'train.cpu_kernels': building {SOURCE.name} with {compiler} failed: {message}")
        move_into_place(partial_file, target)
    finally:
        partial_file.unlink(missing_ok=True)


@cache
def kernels() -> ctypes.CDLL:
    """The kernels, built on the first call of this process when the cache has none for this CPU."""
    compiler = c_compiler()
    if compiler is None:
        named = f"CC={os.environ['CC']!r} is not on PATH" if os.environ.get("CC") else "no C compiler (cc, gcc, clang) is on PATH"
        raise UserError(f"config key 'train.cpu_kernels': {named} (Debian: apt-get install gcc), or set train.cpu_kernels=torch")
    flags = compile_flags()
    path = library_path(compiler, flags)
    if not path.exists():
        build(compiler, flags, path)
    library = ctypes.CDLL(str(path))
    for name, (arguments, result) in SIGNATURES.items():
        getattr(library, name).argtypes, getattr(library, name).restype = arguments, result
    if blas_sgemm():
        library.set_sgemm(blas_sgemm())
    return library


@cache
def blas_sgemm() -> int | None:
    """The address of cblas_sgemm with 64-bit integers in numpy's OpenBLAS, which packed attention multiplies with;
    None where numpy has another BLAS."""
    for found in threadpool_info():
        if found["internal_api"] == "openblas":
            library = ctypes.CDLL(found["filepath"])
            for name in ("scipy_cblas_sgemm64_", "cblas_sgemm64_"):  # numpy's wheels; a system OpenBLAS built for 64 bits
                if hasattr(library, name):
                    return ctypes.cast(getattr(library, name), ctypes.c_void_p).value
    return None
