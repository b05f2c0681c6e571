"""llama.cpp's own tools, never a converter of ours: `convert_hf_to_gguf.py` with its `gguf-py` (taken from the
pinned llama-cpp-python source distribution at install time, `make install-gguf`) and the quantizer of the
llama-cpp-python library (`llama_model_quantize`, for the K-quants)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

LLAMA_CPP_PYTHON = "0.3.36"
INSTALL_HINT = "run `make install-gguf` (it builds llama-cpp-python==0.3.36 and unpacks llama.cpp's converter)"
# the converter writes these itself; the quantizer makes the others from its float32 output
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = {
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q2_k": "Q2_K",
    "q3_k_s": "Q3_K_S",
    "q3_k_m": "Q3_K_M",
    "q3_k_l": "Q3_K_L",
    "q4_k_s": "Q4_K_S",
    "q4_k_m": "Q4_K_M",
    "q5_k_s": "Q5_K_S",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
}
QUANTS = (*CONVERTER_TYPES, *QUANTIZER_TYPES)


def converter_dir() -> Path:
    """The folder with convert_hf_to_gguf.py, conversion/ and gguf-py/: LLM_TUNING_LLAMA_CPP, or the one
    `make install-gguf` unpacks into the virtual environment."""
    folder = Path(os.environ.get("LLM_TUNING_LLAMA_CPP") or Path(sys.prefix) / "share" / "llama.cpp")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"GGUF export needs llama.cpp's converter, not found in {folder}: {INSTALL_HINT}")
    return folder


def convert(model_dir: Path, output: Path, outtype: str) -> None:
    """llama.cpp's converter on a model folder; its first error line becomes a one-line UserError."""
    folder = converter_dir()
    # its own gguf-py first: the converter and the gguf package of one llama.cpp tree belong together
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "gguf-py"), str(folder)])}
    command = [
        sys.executable,
        str(folder / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(output),
        "--outtype",
        outtype,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise UserError(f"llama.cpp's converter failed on {model_dir}: {conversion_error(result.stderr)}")


def conversion_error(stderr: str) -> str:
    """The line of the converter's output that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "not supported" in line or "Error" in line or "error" in line:
            return line.split("ERROR:", 1)[-1].strip()[:300]
    return (lines[-1] if lines else "no output")[:300]


def quantize(source: Path, output: Path, quant: str) -> None:
    """llama.cpp's quantizer, through the llama-cpp-python library."""
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANTIZER_TYPES[quant]}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp's quantizer failed to make {quant} from {source}")


def version() -> str:
    return import_llama_cpp().__version__


def import_llama_cpp():
    try:
        import llama_cpp  # an optional extra, compiled at install: only export and its checks need it
    except ImportError:
        raise UserError(f"GGUF export needs the llama-cpp-python package: {INSTALL_HINT}") from None
    return llama_cpp
