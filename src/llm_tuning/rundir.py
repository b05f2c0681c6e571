"""A run's folder: the files a training run writes (its resolved config.yaml, log.jsonl, run_summary.json,
loss.png, checkpoints), and the rule for every command that writes a folder: never into a non-empty one unless asked,
and then only over a folder that llm-tuning wrote itself."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config.load import load_config
from .config.sections import Config
from .errors import UserError

RUN_CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "run_summary.json"
LOG_FILE = "log.jsonl"
LOSS_CHART = "loss.png"
CHECKPOINT_PREFIX = "checkpoint-"


def save_run_config(config: Config, run_dir: str | Path) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
    Path(run_dir, RUN_CONFIG_FILE).write_text(text, encoding="utf-8")


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a training run stored in its output directory."""
    path = Path(run_dir, RUN_CONFIG_FILE)
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise UserError(f"{run_dir} is not an llm-tuning run directory: it has no {RUN_CONFIG_FILE}")
    return load_config(path)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


def check_output_folder(folder: Path, name: str, overwrite: bool, how_to_overwrite: str, marker: str, kind: str) -> None:
    """Refuse to write into `folder` (named `name` in messages: a config key or an option) when it is not empty,
    unless `overwrite`; even then only over what llm-tuning wrote itself (`kind`, recognised by its `marker`
    file). Deletes nothing: the caller replaces the old contents once its new ones are ready."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{name} '{folder}' exists and is not a directory")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise UserError(f"{name} '{folder}' is not empty; {how_to_overwrite}")
        if not (folder / marker).is_file():
            raise UserError(f"{name} '{folder}' is not empty and is not {kind}; refusing to delete it")


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> Path | None:
    """A training run's output directory: the checkpoint to resume from (with resume), or None after checking
    that the run may write there."""
    if resume:
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is None:
            raise UserError(f"train.resume is true but {output_dir} holds no {CHECKPOINT_PREFIX}* folder to resume from")
        return checkpoint
    how = "set train.overwrite=true to replace it or train.resume=true to continue it"
    check_output_folder(output_dir, "train.output_dir", overwrite, how, RUN_CONFIG_FILE, "an llm-tuning run")
    return None


def last_checkpoint(output_dir: Path) -> Path | None:
    if not output_dir.is_dir():
        return None
    checkpoints = [
        p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(checkpoints, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)
