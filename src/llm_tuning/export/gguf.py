"""Export a trained run (merged as `merge` merges, into the base loaded unquantized) or a model folder as one GGUF
file: llama.cpp's converter, then its quantizer for the K-quants. The file carries the run's template as its chat
template and the token its answers end with as its EOS (merging.py puts both into the merged folder). Written to a
temporary file beside the output, then renamed; `FILE.gguf.json` says what it is."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from ..config.sections import ModelConfig
from ..data.templates import get_template
from ..errors import UserError
from ..files import move_into_place, write_errors, write_json
from ..merging import MERGE_SUMMARY_FILE, merge
from ..models.loading import load_tokenizer
from ..models.resolve import model_type, resolve_model_path
from ..rundir import load_run_config
from . import llama_cpp
from .ollama import write_modelfile


def export_gguf(
    output: str | Path,
    adapter: str | Path | None = None,
    model: str | Path | None = None,
    quant: str = "f16",
    overwrite: bool = False,
    ollama: bool = False,
) -> dict:
    """Write `output` (a .gguf file) from the run in `adapter` or the model folder (or alias) `model`; returns what
    FILE.gguf.json records."""
    if (adapter is None) == (model is None):
        raise UserError("export needs --adapter RUN_DIR (a trained run) or --model PATH (a model folder), one of them")
    if quant not in llama_cpp.QUANTS:
        raise UserError(f"--quant {quant!r} is not one of: {', '.join(llama_cpp.QUANTS)}")
    output = Path(output).expanduser().resolve()
    if output.suffix != ".gguf":
        raise UserError(f"--output '{output}': name the file FILE.gguf")
    if output.exists() and not overwrite:
        raise UserError(f"--output '{output}' exists; pass --overwrite to replace it")
    llama_cpp.converter_dir(), llama_cpp.version()  # both there before the slow part starts
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as work:
        source, record = source_folder(Path(work), adapter, model)
        converted = Path(work) / "converted.gguf"
        outtype = quant if quant in llama_cpp.CONVERTER_TYPES else "f32"
        _say(f"[2/3] llama.cpp's converter: {source.name} -> GGUF {outtype}")
        llama_cpp.convert(source, converted, outtype)
        if quant in llama_cpp.QUANTIZER_TYPES:
            _say(f"[3/3] llama.cpp's quantizer: {outtype} -> {quant}")
            quantized = Path(work) / "quantized.gguf"
            llama_cpp.quantize(converted, quantized, quant)
            converted = quantized
        else:
            _say(f"[3/3] no quantizer needed for {quant}")
        with write_errors(output):
            move_into_place(converted, output)  # the same folder: the file appears whole or not at all
        tokenizer = load_tokenizer(record.pop("model_config"), str(source))
        template = get_template(record["template"], tokenizer, model_type(str(source)))
        if ollama:
            record["modelfile"] = str(write_modelfile(output, template, tokenizer, record.pop("system")))
        record.pop("system", None)
    record.update(
        quant=quant,
        llama_cpp_version=llama_cpp.version(),
        bytes=output.stat().st_size,
        seconds=round(time.monotonic() - started, 1),
    )
    write_json(output.with_name(output.name + ".json"), record)
    _say(f"exported {output} ({record['bytes'] / 2**20:.1f} MiB, {quant}) in {record['seconds']:.0f} s")
    return record


def source_folder(work: Path, adapter, model) -> tuple[Path, dict]:
    """The folder to convert and what it is: the run merged into `work`, or the model folder itself."""
    if adapter is not None:
        _say(f"[1/3] merging {adapter} into its base (full precision)")
        config = load_run_config(adapter)
        folder = merge(adapter, work / "merged")
        return folder, {
            "run": str(Path(adapter).resolve()),
            "base": config.model.path,
            "template": config.data.template,
            "system": config.data.system,
            "model_config": config.model,
        }
    folder = Path(resolve_model_path(str(model)))
    if not folder.is_dir():
        raise UserError(f"--model '{model}': export needs a local model folder (or a built-in alias), not a hub id")
    _say(f"[1/3] {folder}: as it is, no merge")
    merged = folder / MERGE_SUMMARY_FILE
    summary = json.loads(merged.read_text(encoding="utf-8")) if merged.is_file() else {}
    config = load_run_config(summary["adapter"]) if summary.get("adapter") and Path(summary["adapter"]).is_dir() else None
    return folder, {
        "run": summary.get("adapter"),
        "base": summary.get("base_model", str(folder)),
        "template": summary.get("template", "auto"),
        "system": config.data.system if config else None,
        "model_config": config.model if config else ModelConfig(path=str(folder)),
    }


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
