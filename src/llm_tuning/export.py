"""`llm-tuning merge`: fold a trained adapter (or write the trained weights) into its base and save a standalone model folder
(safetensors weights, tokenizer with the chat template the run trained with, generation config)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .config import load_run_config
from .data.templates import get_template
from .errors import UserError
from .methods import get_method
from .models import load_model, load_tokenizer, model_type, resolve_model_path
from .weights import is_peft_model, load_trained

MERGE_SUMMARY_FILE = "llm_tuning_merge.json"


def merge(adapter: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Merge the run in `adapter` into its base model; write the merged model to `output`."""
    config = load_run_config(adapter)
    method = get_method(config.method.name)
    if not getattr(method, "MERGEABLE", False):
        raise UserError(f"method {config.method.name} cannot be merged: {method.NOT_MERGEABLE_REASON}")
    output = Path(output).expanduser().resolve()
    _check_output(output, overwrite)

    path = resolve_model_path(config.model.path)
    tokenizer = load_tokenizer(config.model, path)
    # Always merge into the base in full precision: merging into a quantized base would re-quantize, lossily.
    model = load_trained(load_model(config.model, path, dtype="float32", quantize=False), adapter)
    if is_peft_model(model):
        model = model.merge_and_unload()
    template = get_template(config.data.template, tokenizer, model_type(path))
    if template.jinja:
        # Carry the format the model was trained with, so that chat tools serve it the same way.
        tokenizer.chat_template = template.jinja

    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    summary = {
        "adapter": str(Path(adapter).resolve()),
        "base_model": path,
        "method": config.method.name,
        "template": config.data.template,
    }
    (partial / MERGE_SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    print(f"merged model saved to {output}", file=sys.stderr)
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"--output '{output}' exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"--output '{output}' is not empty; pass --overwrite to replace it")
        if not (output / MERGE_SUMMARY_FILE).is_file():
            raise UserError(f"--output '{output}' is not empty and is not a model merged by llm-tuning; refusing to delete it")
