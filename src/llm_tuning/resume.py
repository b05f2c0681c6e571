"""What a resumed run must keep and what it reuses: the settings that may change on `train.resume` (how long to
train, how often to log, evaluate and save) and those that may not (everything that decides what is trained),
and the record of choices made at run time (the data's fingerprint, which library multiplies, the allocator),
kept in the run's folder as run_record.json.

Imports nothing heavy: the command reads the record before torch loads, to restart on the run's allocator."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .files import write_json

RUN_RECORD_FILE = "run_record.json"
# Keys a resumed run may set differently: how long it trains, how often it logs, evaluates and saves, where the
# run lives, and checks made before training. Every other key decides what is trained and must stay the same.
MAY_CHANGE = (
    "train.output_dir",
    "train.max_steps",
    "train.num_epochs",
    "train.logging_steps",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.overwrite",
    "train.resume",
    "train.check_memory",
    "train.report_to",
    "data.val_path",
)
ACCUMULATION = "train.gradient_accumulation_steps"  # may change if the global batch does not (check_same_training)
AUTO_TEMPLATE = "auto"  # resolved when a run starts, stored resolved: `auto` matches whatever it resolved to


def config_differences(trained: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for every setting in which `new` differs from the config a run was trained with
    (both as Config.to_dict gives them), except those that may change on resume."""
    differences = []
    for section in sorted(set(trained) | set(new)):
        old_values, new_values = trained.get(section) or {}, new.get(section) or {}
        for key in sorted(set(old_values) | set(new_values)):
            name = f"{section}.{key}"
            old, value = old_values.get(key), new_values.get(key)
            if name in MAY_CHANGE or name == ACCUMULATION or old == value or (name == "data.template" and value == AUTO_TEMPLATE):
                continue
            differences.append(f"{name}: {old!r} -> {value!r}")
    return differences


def check_same_training(trained: dict, new: dict, run_dir: Path, started_processes: int = 1, processes: int = 1) -> None:
    """Refuse to resume the run in `run_dir` with a config that changes what it trains. It may resume in another
    number of processes (`started_processes` -> `processes`) if the global batch stays the same, through
    train.gradient_accumulation_steps."""
    differences = config_differences(trained, new)
    if differences:
        raise UserError(
            f"train.resume: this config changes what the run in {run_dir} trains ({'; '.join(differences)}); only "
            f"{', '.join(MAY_CHANGE)} may change on resume, and {ACCUMULATION} with the number of processes. Use a "
            "new train.output_dir to train differently"
        )
    started, now = global_batch(trained, started_processes), global_batch(new, processes)
    if started != now:
        hint = ""
        accumulation, rest = divmod(started, new["train"]["batch_size"] * processes)
        if not rest:
            hint = f"; in {processes} process{'es' if processes > 1 else ''} set {ACCUMULATION}={accumulation}"
        raise UserError(
            f"train.resume: the run in {run_dir} started with a global batch of {started} samples per step "
            f"({_batch_terms(trained, started_processes)}), this one would take {now} ({_batch_terms(new, processes)}); "
            f"it must stay the same{hint}"
        )


def global_batch(config: dict, processes: int) -> int:
    """Samples per optimizer step: micro-batch x accumulation x processes."""
    return config["train"]["batch_size"] * config["train"]["gradient_accumulation_steps"] * processes


def _batch_terms(config: dict, processes: int) -> str:
    t = config["train"]
    return f"batch_size {t['batch_size']} x accumulation {t['gradient_accumulation_steps']} x {processes} processes"


def check_same_data(record: dict, fingerprint: str, run_dir: Path) -> None:
    """Refuse to resume on other training samples than the run started with (same files, changed content)."""
    if record.get("data_sha256") not in (None, fingerprint):
        raise UserError(
            f"train.resume: the training data differs from what the run in {run_dir} trained on (its samples' sha256 "
            f"was {record['data_sha256'][:12]}..., is {fingerprint[:12]}...): a data file changed since"
        )


def read_run_record(run_dir: Path) -> dict:
    """The run-time choices recorded in `run_dir` (empty when none were: a run made by an older llm-tuning)."""
    path = Path(run_dir) / RUN_RECORD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        raise UserError(f"{path} is damaged (not JSON); it records how the run started and cannot be resumed without it")


def write_run_record(run_dir: Path, record: dict) -> None:
    write_json(Path(run_dir) / RUN_RECORD_FILE, record)
