"""The models a server answers as: one base model, loaded once, and the runs trained on it, each by its name.

Runs of one kind share the base: peft adapters of one type (peft holds one type in a model) are loaded as named
adapters and switched per batch. A run that changes the base for good (full, freeze, bitfit: the model's own
weights; bottleneck adapters: hooks without names) is served alone, and then the base is not served. Every run must
have the same base (path, dtype, quantization) and template. What a kind can do is weights.py's to say
(`trained_kind`, `shares_base`, `load_trained`, `adapter_in_use`), not this module's.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config.load import load_config
from ..config.sections import Config
from ..errors import UserError
from ..generation import Session
from ..models.aliases import ALIASES
from ..rundir import load_run_config
from ..weights import adapter_in_use, base_model, load_trained, shares_base, trained_kind


@dataclass(frozen=True)
class Served:
    """A name the server answers as."""

    name: str
    config: Config  # its template and default system prompt (data.system)
    adapter: str | None  # the adapter's name inside the model; None: the model as loaded
    parent: str | None = None  # the base's name, for a run


@dataclass(frozen=True)
class Run:
    name: str
    run_dir: Path
    config: Config
    kind: str


def parse_adapter(text: str) -> tuple[str, Path]:
    """`NAME=RUN_DIR` or `RUN_DIR` (named after its folder)."""
    name, separator, folder = text.partition("=")
    if not separator or os.path.exists(text) or not name:
        name, folder = Path(text).resolve().name, text
    return name, Path(folder)


def base_name(config: Config) -> str:
    """The base's name: its alias, its folder's name, or its hub id."""
    path = config.model.path
    if path in ALIASES or not Path(path).expanduser().is_dir():
        return path
    return Path(path).expanduser().resolve().name


def plan(config=None, overrides=(), adapters=()) -> tuple[Config, list[Run]]:
    """The base's config and each run, checked to fit together before anything loads."""
    if adapters and config is not None:
        raise UserError("give either a CONFIG (a base model) or --adapter RUN_DIR (each run's config.yaml is used), not both")
    runs = []
    for text in adapters:
        name, run_dir = parse_adapter(text)
        run_config = load_config(load_run_config(run_dir).to_dict(), overrides)
        runs.append(Run(name, run_dir, run_config, trained_kind(run_dir)))
    base = runs[0].config if runs else load_config(config, overrides)
    check_runs(base, runs)
    return base, runs


def check_runs(base: Config, runs: list[Run]) -> None:
    alone = next((run for run in runs if not shares_base(run.kind)), None)
    if alone is not None and len(runs) > 1:
        raise UserError(
            f"run {alone.name} ({alone.run_dir}, {alone.kind}) changes its base for good: it is served alone, one per server"
        )
    names = [run.name for run in runs] + ([] if alone else [base_name(base)])
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"two models would be named '{name}'; name the runs with --adapter NAME=RUN_DIR")
    first = runs[0] if runs else None
    for run in runs[1:]:
        pairs = (
            ("kind", first.kind, run.kind),
            ("base model", _base_of(first.config), _base_of(run.config)),
            ("template", first.config.data.template, run.config.data.template),
        )
        for what, mine, theirs in pairs:
            if mine != theirs:
                raise UserError(
                    f"runs {first.name} and {run.name} differ in {what} ({mine} and {theirs}); one server serves runs of "
                    "one base, template and adapter kind: start a server for each"
                )


def _base_of(config: Config) -> str:
    model = config.model
    return f"{model.path} ({model.dtype}, quantization {model.quantization})"


class ModelRegistry:
    """The loaded model (a Session: tokenizer, template, model) and every name it answers as."""

    def __init__(self, config=None, overrides=(), adapters=()):
        base, runs = plan(config, overrides, adapters)
        self.session = Session(base)
        model = self.session.model
        # inside peft, adapters go by names of our own: peft mistakes a name within its prefixes ("lora", "prefix")
        inner = {run.name: f"run{index}" for index, run in enumerate(runs)}
        for run in runs:
            print(f"[llm-tuning] loading run {run.name} from {run.run_dir}", file=sys.stderr, flush=True)
            model = load_trained(model, run.run_dir, inner[run.name])
        self.session.model = model.eval().to(self.session.device)
        self.served: dict[str, Served] = {}
        if all(shares_base(run.kind) for run in runs):
            self.served[base_name(base)] = Served(base_name(base), base, None)
        for run in runs:
            adapter = inner[run.name] if shares_base(run.kind) else None
            self.served[run.name] = Served(run.name, run.config, adapter, parent=base_name(base))
        self.context_length = context_length(base_model(model).config)

    def get(self, name: str) -> Served | None:
        return self.served.get(name)

    @contextmanager
    def use(self, served: Served):
        """The model, answering as `served`, for one batch (the worker thread alone calls this)."""
        with adapter_in_use(self.session.model, served.adapter) as model:
            yield model


def context_length(model_config) -> int | None:
    """The longest sequence the model takes, from its config (None when it does not say)."""
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
