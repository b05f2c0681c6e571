"""Checkpoints that a crash cannot spoil, and a resume that continues exactly where the run was.

transformers' Trainer writes a checkpoint straight into `checkpoint-N` and deletes old ones by modification time, so
a kill mid-write leaves a half-written folder that resume then picks. `CrashSafeCheckpoints` keeps all of the
Trainer's own saving code and only moves where it writes: into `checkpoint-N.partial`, which gets a manifest
(files, sizes, sha256), is flushed to the disk and renamed; only then are old checkpoints deleted. Resume takes
the newest checkpoint whose manifest, required files and pickles check out, and skips the others with a line
saying why.

Exact continuation. The Trainer restores weights, optimizer, scheduler, RNG states and the data position, but
two things differ after a resume. Its loss accumulator starts from zero: resumed between two logging steps, its
first logged loss would average only the steps since the resume; each checkpoint here also stores that sum and
the step it started at (STATE_FILE). And its length-grouped sampler (unpacked batches) shuffles with the global
RNG at the start of each epoch, which a resumed process holds in another state: `SeededLengthGroupedSampler`
shuffles with the data seed and the epoch instead, as the sampler of packed rows already does. Resumed from a
checkpoint at its last step in the middle of an epoch, the Trainer would train one step more (it checks the
limit after each step); here it trains none.

With several processes, every process writes its RNG state (and under FSDP or ZeRO its shards) into the one
`.partial` folder, and the main process renames it once all have written. train.output_dir must then be on a file
system every machine of the job shares.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import torch
from transformers.trainer import (
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
)
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices, safe_globals

from ..distributed import barrier, mean_over_processes
from ..errors import UserError, first_line
from ..files import (
    PARTIAL_SUFFIX,
    REPLACED_SUFFIX,
    folder_written_whole,
    manifest_problem,
    partial_path,
    write_file_whole,
    write_json,
)
from ..rundir import CHECKPOINT_PREFIX, LOG_FILE, checkpoint_folders, remove_run_manifest
from .callbacks import log_line

STATE_FILE = "llm_tuning_state.json"  # the Trainer's loss accumulator, which it does not save itself
RNG_STATE_FILE = "rng_state.pth"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
REQUIRED_FILES = (TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, STATE_FILE)
PROCESS_RNG_STATE_FILES = "rng_state_*.pth"  # one per process, in a checkpoint of a run of several


class CrashSafeCheckpoints:
    """Trainer mixin: checkpoints written whole and rotated by step after the new one is complete (`keep`: how
    many to keep, None for all), and the loss accumulator saved and restored with them. With several processes,
    each writes its part (its RNG state; its shards under FSDP or ZeRO) into the main process's .partial folder, and
    the main process completes and renames it once all have written."""

    keep_checkpoints: int | None = None
    _checkpoint_root: Path | None = None

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is saved, the Trainer's own code writes it under the .partial folder.
        return str(self._checkpoint_root) if self._checkpoint_root else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self.args.output_dir)
        final = run_dir / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        # each process sums its own losses; the log shows their mean, which is what a resumed process restarts from
        loss_state = {"loss_sum": mean_over_processes(self._tr_loss.item()), "last_logged_step": self._globalstep_last_logged}
        if not self.args.should_save:
            barrier()  # the main process has made the .partial folder
            self._write_checkpoint(model, trial, partial_path(final))
            barrier()  # every process has written its part
            return
        with folder_written_whole(final, manifest=True) as partial:
            barrier()
            self._write_checkpoint(model, trial, partial)
            barrier()
            written = partial / final.name
            for item in written.iterdir():
                item.rename(partial / item.name)
            written.rmdir()
            (partial / TRAINING_ARGS_NAME).unlink(missing_ok=True)  # a pickle nothing reads back
            write_json(partial / STATE_FILE, loss_state)
        rotate_checkpoints(run_dir, self.keep_checkpoints, final)

    def _write_checkpoint(self, model, trial, root: Path) -> None:
        """The Trainer's own saving code, writing into root/checkpoint-N."""
        self._checkpoint_root = root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_root = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            # groups of a global batch, which accelerate then deals out to the processes: the same samples per step in
            # any number of processes
            return SeededLengthGroupedSampler(sampler.batch_size * self.args.world_size, sampler.lengths, self.args.data_seed)
        return sampler

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps:  # resumed at (or past) the last step: nothing to train
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _load_rng_state(self, checkpoint) -> None:
        # Called once, just before the first resumed step, after the Trainer reset its loss accumulator.
        super()._load_rng_state(checkpoint)
        if checkpoint is not None:
            state = json.loads(Path(checkpoint, STATE_FILE).read_text(encoding="utf-8"))
            self._tr_loss += state["loss_sum"]
            self._globalstep_last_logged = state["last_logged_step"]


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, shuffled by a generator seeded with `seed` + the epoch (which the
    Trainer sets each epoch): the same batches in every process, resumed or not."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def rotate_checkpoints(run_dir: Path, keep: int | None, newest: Path) -> None:
    """Delete all but the `keep` highest-numbered checkpoints, never `newest` (complete by now)."""
    if keep is None:
        return
    for folder in checkpoint_folders(run_dir)[keep:]:
        if folder != newest:
            shutil.rmtree(folder, ignore_errors=True)


def resumable_checkpoint(output_dir: Path) -> Path:
    """The newest checkpoint that is complete and safe to load; each newer one is skipped with a line saying why."""
    found = checkpoint_folders(output_dir)
    if not found:
        raise UserError(f"train.resume is true but {output_dir} holds no {CHECKPOINT_PREFIX}* folder to resume from")
    for folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        print(f"skipping {folder}: {problem}", file=sys.stderr, flush=True)
    raise UserError(f"train.resume is true but no checkpoint in {output_dir} is complete (each is named above with its problem)")


def checkpoint_problem(folder: Path) -> str | None:
    """What makes `folder` unfit to resume from, or None."""
    problem = manifest_problem(folder)
    if problem:
        return problem
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not (folder / RNG_STATE_FILE).is_file() and not any(folder.glob(PROCESS_RNG_STATE_FILES)):
        missing.append(RNG_STATE_FILE)
    if missing:
        return f"{missing[0]} is missing"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"it holds no model weights ({', '.join(WEIGHT_FILES)})"
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        problem = pickle_problem(path)
        if problem:
            return problem
    return None


def pickle_problem(path: Path) -> str | None:
    """Why torch cannot load `path` as tensors and plain values only (weights_only), or None. The tensors' bytes are
    mapped, not read, so this costs little even for a large optimizer state."""
    try:
        with safe_globals():  # numpy's RNG state, as transformers allows it
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        return f"{path.name} holds Python objects other than tensors; refused, not loaded ({first_line(error)})"
    except Exception as error:
        return f"{path.name} cannot be read: {first_line(error)}"
    return None


def reopen_run_folder(output_dir: Path, checkpoint: Path | None) -> None:
    """Before a run writes into its folder again: its results are not complete until its new manifest, what
    interrupted writes left goes, and a resumed run's log is as it was at its checkpoint."""
    remove_run_manifest(output_dir)
    remove_partial_writes(output_dir)
    if checkpoint is not None:
        restore_log(output_dir, checkpoint)


def remove_partial_writes(output_dir: Path) -> None:
    """Delete what interrupted writes left in a run's folder (`*.partial`, `*.replaced`): never complete, never read."""
    for path in sorted(output_dir.glob(f"*{PARTIAL_SUFFIX}")) + sorted(output_dir.glob(f"*{REPLACED_SUFFIX}")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def restore_log(output_dir: Path, checkpoint: Path) -> None:
    """log.jsonl as it was when `checkpoint` was written: what was logged after it will be logged again."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    write_file_whole(output_dir / LOG_FILE, "".join(log_line(entry) for entry in state["log_history"]))
