"""Store and restore what a run trained.

peft methods (lora, ia3, prompt, ptuning, prefix) save peft's standard adapter (`adapter_config.json`,
`adapter_model.safetensors`), which plain `PeftModel.from_pretrained` loads. Bottleneck adapters save their own
tensors and options (methods/adapter.py). Methods that train the model's own parameters (full, freeze, bitfit)
save only those tensors (`trained_weights.safetensors`); the base model named in the run's config.yaml supplies
the rest. Each file is written whole; a run is loaded only once its manifest.json says that its results are
complete.

Several runs can share one base model (a server answers with each by name): `trained_kind` tells what a run saved,
`shares_base` whether runs of that kind load side by side, `load_trained` adds each under its name and
`adapter_in_use` picks one (or none, for the base) for the next forward passes. Another kind of adapter plugs in
at these four places.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peft import PeftModel
from safetensors.torch import load_file, save_file

from .errors import UserError
from .files import files_written_whole, manifest_problem
from .methods import adapter as bottleneck

ADAPTER_CONFIG_FILE = "adapter_config.json"
TRAINED_WEIGHTS_FILE = "trained_weights.safetensors"
WHOLE_MODEL = "whole model"  # the kind of runs that changed the model's own weights (full, freeze, bitfit)
BOTTLENECK = "bottleneck adapters"  # our own adapters (methods/adapter.py): one set per model, not named


def is_peft_model(model) -> bool:
    return isinstance(model, PeftModel)


def base_model(model):
    """The transformers model itself: inside a peft wrapper, or `model` when it is not wrapped."""
    return model.get_base_model() if is_peft_model(model) else model


def save_trained(model, run_dir: str | Path, method_options=None, state: dict | None = None) -> int:
    """Save what trains into `run_dir`, each file flushed and renamed into place (`method_options`: the run's method
    section, which bottleneck adapters store beside their weights); returns the bytes written. `state`: the model's
    full state dict when its own parameters hold only a shard (FSDP, ZeRO-3)."""
    with files_written_whole(Path(run_dir)) as folder:
        if is_peft_model(model):
            model.save_pretrained(folder, state_dict=state)
            return sum(p.stat().st_size for p in folder.glob("adapter_model.*"))
        if bottleneck.is_adapted(model):
            if state is not None:
                raise UserError("bottleneck adapters are saved from whole weights: train them with DDP, not FSDP or ZeRO")
            return bottleneck.save_adapters(model, method_options, folder)
        # named_parameters lists a tied tensor once, so tied embeddings are saved once and re-tied on load.
        tensors = {
            name: (p if state is None else state[name]).detach().contiguous()
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        save_file(tensors, folder / TRAINED_WEIGHTS_FILE, metadata={"format": "pt"})
        return (folder / TRAINED_WEIGHTS_FILE).stat().st_size


def load_trained(model, run_dir: str | Path, name: str = "default"):
    """The base `model` with a run's trained weights in place (a PeftModel for peft methods). A peft adapter is
    loaded under `name`; loaded into a PeftModel, it is added beside the adapters already there."""
    run_dir = Path(run_dir)
    problem = manifest_problem(run_dir)
    if problem:
        raise UserError(
            f"{run_dir}: the run's results are not complete: {problem}; if its training stopped early, finish it with "
            "train.resume=true"
        )
    if (run_dir / ADAPTER_CONFIG_FILE).is_file():
        if is_peft_model(model):
            model.load_adapter(str(run_dir), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(run_dir), adapter_name=name)
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
    raise _no_trained_weights(run_dir)


def trained_kind(run_dir: str | Path) -> str:
    """What a run saved: peft's adapter type (LORA, IA3, PREFIX_TUNING ...), BOTTLENECK, or WHOLE_MODEL for the
    model's own trained tensors."""
    run_dir = Path(run_dir)
    if (run_dir / ADAPTER_CONFIG_FILE).is_file():
        try:
            settings = json.loads((run_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"{run_dir / ADAPTER_CONFIG_FILE}: not valid JSON ({e})") from None
        return str(settings.get("peft_type", "peft")) if isinstance(settings, dict) else "peft"
    if (run_dir / bottleneck.CONFIG_FILE).is_file():
        return BOTTLENECK
    if (run_dir / TRAINED_WEIGHTS_FILE).is_file():
        return WHOLE_MODEL
    raise _no_trained_weights(run_dir)


def shares_base(kind: str) -> bool:
    """Whether runs of `kind` load side by side on one base, which then still answers as itself: peft's adapters
    do (peft holds adapters of one type in a model); the model's own weights and bottleneck adapters change the
    base for good (bottleneck adapters would need names, and a switch in their hook, to share it)."""
    return kind not in (WHOLE_MODEL, BOTTLENECK)


def _no_trained_weights(run_dir: Path) -> UserError:
    kinds = f"{ADAPTER_CONFIG_FILE}, {bottleneck.CONFIG_FILE} or {TRAINED_WEIGHTS_FILE}"
    return UserError(f"{run_dir} holds no trained weights ({kinds}); did its training finish?")


@contextmanager
def adapter_in_use(model, name: str | None) -> Iterator:
    """The model answering with the adapter loaded as `name`, or with its base alone (None)."""
    if not is_peft_model(model):
        yield model
    elif name is None:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(name, inference_mode=True)
        yield model
