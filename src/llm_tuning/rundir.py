"""A run's folder: the files a training run writes (its resolved config.yaml, log.jsonl, run_summary.json,
loss.png, checkpoints, and manifest.json once its results are written whole), and the rule for every command that
writes a folder: never into a non-empty one unless asked, and then only over a folder that llm-tuning wrote itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config.load import load_config
from .config.sections import Config
from .errors import UserError
from .files import MANIFEST_FILE, PARTIAL_SUFFIX, fsync, manifest_problem, write_file_whole, write_manifest

RUN_CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "run_summary.json"
LOG_FILE = "log.jsonl"
LOSS_CHART = "loss.png"
CHECKPOINT_PREFIX = "checkpoint-"


def save_run_config(config: Config, run_dir: str | Path) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
    write_file_whole(Path(run_dir, RUN_CONFIG_FILE), text)


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a training run stored in its output directory."""
    path = Path(run_dir, RUN_CONFIG_FILE)
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise UserError(f"{run_dir} is not an llm-tuning run directory: it has no {RUN_CONFIG_FILE}")
    return load_config(path)


def check_output_folder(folder: Path, name: str, overwrite: bool, how_to_overwrite: str, marker: str, kind: str) -> None:
    """Refuse to write into `folder` (named `name` in messages: a config key or an option) when it is not empty,
    unless `overwrite`; even then only over what llm-tuning wrote itself (`kind`, recognised by its `marker`
    file). Deletes nothing: the caller replaces the old contents once its new ones are ready."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{name} '{folder}' exists and is not a directory")
    if folder.is_dir() and any(not p.name.endswith(PARTIAL_SUFFIX) for p in folder.iterdir()):  # .partial: never complete
        if not overwrite:
            raise UserError(f"{name} '{folder}' is not empty; {how_to_overwrite}")
        if not (folder / marker).is_file():
            raise UserError(f"{name} '{folder}' is not empty and is not {kind}; refusing to delete it")


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Check that a new training run may write to its output directory."""
    how = "set train.overwrite=true to replace it or train.resume=true to continue it"
    check_output_folder(output_dir, "train.output_dir", overwrite, how, RUN_CONFIG_FILE, "an llm-tuning run")


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The run's checkpoint-N folders, complete or not, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def checkpoint_step(folder: Path) -> int | None:
    number = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(number) if folder.name.startswith(CHECKPOINT_PREFIX) and number.isdigit() else None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint written whole (its manifest matches its files)."""
    return next((p for p in checkpoint_folders(output_dir) if manifest_problem(p) is None), None)


def write_run_manifest(run_dir: Path) -> None:
    """The run's manifest.json over its files (not its checkpoints), written last: its presence says that the
    trained weights, config and summary beside it are complete and belong together."""
    names = [p.name for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != MANIFEST_FILE]
    names = [name for name in names if PARTIAL_SUFFIX not in name]
    write_manifest(run_dir, names)


def remove_run_manifest(run_dir: Path) -> None:
    """Before a run writes into its folder again: until the new manifest, its results are not complete."""
    (run_dir / MANIFEST_FILE).unlink(missing_ok=True)
    fsync(run_dir)
