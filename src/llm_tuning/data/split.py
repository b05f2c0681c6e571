"""The training examples and the validation ones: `data.val_path`, or a `data.val_ratio` share of the records,
shuffled with `data.seed`."""

from __future__ import annotations

import random

from ..config.sections import Config
from ..errors import UserError
from .records import ReadResult, read_examples


def read_data(config: Config) -> tuple[ReadResult, ReadResult | None]:
    """(training examples, validation examples or None)."""
    d = config.data
    if not d.path:
        raise UserError("config key 'data.path' is required: a data file, a list of them, a save_to_disk folder or a hub id")
    train_read = read_examples(d.path, d.columns, d.skip_invalid)
    if d.val_path:
        return train_read, read_examples(d.val_path, d.columns, d.skip_invalid)
    if not d.val_ratio:
        return train_read, None
    examples = list(train_read.examples)
    random.Random(d.seed).shuffle(examples)
    held_out = round(len(examples) * d.val_ratio)
    if held_out == 0 or held_out == len(examples):
        raise UserError(f"data.val_ratio={d.val_ratio} of {len(examples)} examples leaves an empty split; change data.val_ratio")
    return ReadResult(examples[held_out:], train_read.skipped), ReadResult(examples[:held_out])
