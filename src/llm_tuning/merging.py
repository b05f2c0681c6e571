"""`llm-tuning merge`: fold a trained adapter (or write the trained weights) into its base and save a standalone
model folder (safetensors weights, tokenizer with the chat template the run trained with, generation config),
written whole with a manifest.json of its files."""

from __future__ import annotations

import sys
from pathlib import Path

from .data.templates import get_template
from .errors import UserError
from .files import folder_written_whole, write_json
from .methods.registry import get_method
from .models.builtin import keep_original_files
from .models.loading import load_base_model, load_tokenizer
from .models.resolve import model_type, resolve_model_path
from .rundir import check_output_folder, load_run_config
from .weights import is_peft_model, load_trained

MERGE_SUMMARY_FILE = "llm_tuning_merge.json"


def merge(adapter: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Merge the run in `adapter` into its base model; write the merged model to `output`."""
    config = load_run_config(adapter)
    method = get_method(config.method.name)
    if not method.mergeable:
        raise UserError(f"method {config.method.name} cannot be merged: {method.not_mergeable_reason}")
    output = Path(output).expanduser().resolve()
    check_output_folder(
        output, "--output", overwrite, "pass --overwrite to replace it", MERGE_SUMMARY_FILE, "a model merged by llm-tuning"
    )

    path = resolve_model_path(config.model.path)
    tokenizer = load_tokenizer(config.model, path)
    # Always merge into the base in full precision: merging into a quantized base would re-quantize, lossily.
    model = load_trained(load_base_model(config.model, path, dtype="float32", quantize=False), adapter)
    if is_peft_model(model):
        model = model.merge_and_unload()
    template = get_template(config.data.template, tokenizer, model_type(path))
    # Carry the format the model was trained with (and its system prompt), so that chat tools serve it the same way,
    # and make the token its answers end with the EOS, so that they stop where the model learnt to stop.
    tokenizer.chat_template = template.chat_template(tokenizer, config.data.system)
    model.generation_config.eos_token_id = template.stop_ids(tokenizer)
    model.config.eos_token_id = template.answer_end_id(tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)

    with folder_written_whole(output, manifest=True) as partial:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        keep_original_files(path, partial)  # a built-in architecture's folder keeps the original's tokenizer and code
        summary = {
            "adapter": str(Path(adapter).resolve()),
            "base_model": path,
            "method": config.method.name,
            "template": config.data.template,
        }
        write_json(partial / MERGE_SUMMARY_FILE, summary)
    print(f"merged model saved to {output}", file=sys.stderr)
    return output
