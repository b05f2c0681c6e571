"""Store and restore what a run trained.

peft methods (lora, ia3, prompt, ptuning, prefix) save peft's standard adapter (`adapter_config.json`,
`adapter_model.safetensors`), which plain `PeftModel.from_pretrained` loads. Bottleneck adapters save their own
tensors and options (methods/adapter.py). Methods that train the model's own parameters (full, freeze, bitfit)
save only those tensors (`trained_weights.safetensors`); the base model named in the run's config.yaml supplies
the rest. Each file is written whole; a run is loaded only once its manifest.json says that its results are
complete.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from safetensors.torch import load_file, save_file

from .errors import UserError
from .files import files_written_whole, manifest_problem
from .methods import adapter as bottleneck

ADAPTER_CONFIG_FILE = "adapter_config.json"
TRAINED_WEIGHTS_FILE = "trained_weights.safetensors"


def is_peft_model(model) -> bool:
    return isinstance(model, PeftModel)


def base_model(model):
    """The transformers model itself: inside a peft wrapper, or `model` when it is not wrapped."""
    return model.get_base_model() if is_peft_model(model) else model


def save_trained(model, run_dir: str | Path, method_options=None) -> int:
    """Save what trains into `run_dir`, each file flushed and renamed into place (`method_options`: the run's method
    section, which bottleneck adapters store beside their weights); returns the bytes written."""
    with files_written_whole(Path(run_dir)) as folder:
        if is_peft_model(model):
            model.save_pretrained(folder)
            return sum(p.stat().st_size for p in folder.glob("adapter_model.*"))
        if bottleneck.is_adapted(model):
            return bottleneck.save_adapters(model, method_options, folder)
        # named_parameters lists a tied tensor once, so tied embeddings are saved once and re-tied on load.
        tensors = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, folder / TRAINED_WEIGHTS_FILE, metadata={"format": "pt"})
        return (folder / TRAINED_WEIGHTS_FILE).stat().st_size


def load_trained(model, run_dir: str | Path):
    """The base `model` with a run's trained weights in place (a PeftModel for peft methods)."""
    run_dir = Path(run_dir)
    problem = manifest_problem(run_dir)
    if problem:
        raise UserError(
            f"{run_dir}: the run's results are not complete: {problem}; if its training stopped early, finish it with "
            "train.resume=true"
        )
    if (run_dir / ADAPTER_CONFIG_FILE).is_file():
        return PeftModel.from_pretrained(model, str(run_dir))
    if (run_dir / bottleneck.CONFIG_FILE).is_file():
        return bottleneck.load_adapters(model, run_dir)
    if (run_dir / TRAINED_WEIGHTS_FILE).is_file():
        state = load_file(run_dir / TRAINED_WEIGHTS_FILE)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise UserError(
                f"{run_dir}: trained weights do not fit the base model (e.g. {result.unexpected_keys[0]}); was model.path "
                "changed?"
            )
        return model
    kinds = f"{ADAPTER_CONFIG_FILE}, {bottleneck.CONFIG_FILE} or {TRAINED_WEIGHTS_FILE}"
    raise UserError(f"{run_dir} holds no trained weights ({kinds}); did its training finish?")
