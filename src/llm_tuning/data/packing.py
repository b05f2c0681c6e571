"""Packing: several samples share one row of at most max_length tokens, so no compute goes to padding.

Each sample keeps its own positions (they restart at 0), so a sample never attends to the one before it: the
trainer passes each row's sample lengths and `packed_sdpa` (speed/packed_attention.py) runs causal attention
once per sample, so that no compute goes to the pairs a block-diagonal mask would throw away. (Models on another
attention implementation get that mask from transformers, which builds it from restarting position ids when no
attention mask is given: masking_utils.find_packed_sequence_indices.) The first token of every sample is
unlabelled, so no sample is trained to follow another's EOS: the per-sample loss equals the unpacked one
(tests/data/test_packing.py).
"""

from __future__ import annotations

import bisect
import inspect

import torch

from ..weights import base_model
from .encode import IGNORE_INDEX

# peft methods that prepend virtual tokens or past keys to every row: one row must be one sample for them
ROW_PER_SAMPLE_PEFT_TYPES = {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"}


def packing_unsupported_reason(model) -> str | None:
    """Why this model (with its method applied) cannot train packed rows, or None if it can."""
    peft_config = getattr(model, "active_peft_config", None)
    peft_type = str(getattr(getattr(peft_config, "peft_type", None), "value", "") or "")
    if peft_type in ROW_PER_SAMPLE_PEFT_TYPES:
        return f"{peft_type.lower()} adds virtual tokens to every row"
    base = base_model(model)
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{base.config.model_type} takes no position ids (positions cannot restart inside a row)"
    return None


def pack_rows(samples: list[dict], max_length: int) -> list[dict]:
    """Samples placed into as few rows of at most `max_length` tokens as first-fit decreasing finds; each row
    holds input_ids, labels, position_ids and its samples' lengths."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["input_ids"]), reverse=True)
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: the tightest row that fits comes first
    for index in order:
        length = len(samples[index]["input_ids"])
        slot = bisect.bisect_left(free, (length, -1))
        if slot == len(free):
            rows.append([index])
            bisect.insort(free, (max_length - length, len(rows) - 1))
            continue
        room, row = free.pop(slot)
        rows[row].append(index)
        bisect.insort(free, (room - length, row))
    return [join_samples([samples[i] for i in row]) for row in rows]


def join_samples(samples: list[dict]) -> dict:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for sample in samples:
        input_ids += sample["input_ids"]
        labels += [IGNORE_INDEX] + sample["labels"][1:]  # nothing predicts a sample's first token from the last one
        position_ids += range(len(sample["input_ids"]))
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "lengths": [len(s["input_ids"]) for s in samples],
    }


class PackedCollator:
    """Stacks packed rows into a batch, padding on the right to the longest row. The padding is its own
    segment (positions restart at 0), unlabelled; `attention_mask` marks real tokens for Trainer's token count
    only: the trainer drops it before the forward pass, since a mask would switch off the block-diagonal one."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
        for row in rows:
            pad = width - len(row["input_ids"])
            batch["input_ids"].append(row["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(row["labels"] + [IGNORE_INDEX] * pad)
            batch["position_ids"].append(row["position_ids"] + list(range(pad)))
            batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def segment_lengths(position_ids) -> list[list[int]]:
    """Per row, the lengths of its samples and of the padding after them: each starts where positions restart at 0."""
    lengths = []
    for row in position_ids.tolist():
        starts = [i for i, position in enumerate(row) if position == 0] + [len(row)]
        lengths.append([end - start for start, end in zip(starts, starts[1:])])
    return lengths


def packed_forward_inputs(inputs: dict, with_segments: bool) -> dict:
    """A packed batch as the model takes it: without the attention mask, which is there only for Trainer's token
    count (a mask, or a cache, would each switch off the block-diagonal attention that restarting positions give),
    and with each row's sample lengths (`packed_segments`, for packed_sdpa) when `with_segments`."""
    inputs = {**{k: v for k, v in inputs.items() if k != "attention_mask"}, "use_cache": False}
    if with_segments:
        inputs["packed_segments"] = segment_lengths(inputs["position_ids"])
    return inputs
