"""`llm-tuning inspect`: what the model will be trained on. A few samples decoded with trained and masked
spans told apart, the length statistics of the whole set (with the max length the tutorials' rule recommends),
and checks of the encoding: stop token trained at the end of every untruncated sample, no padding labelled,
the template against the model's own chat template."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from transformers import DataCollatorForSeq2Seq

from .config.load import as_config
from .config.sections import Config
from .data.encode import IGNORE_INDEX, encode_example
from .data.split import read_data
from .data.templates import get_template
from .files import write_file_whole
from .models.loading import ensure_pad_token, load_tokenizer
from .models.resolve import model_type, resolve_model_path

UNLIMITED = 10**9


def inspect_data(config: Config | str | Path | dict | None = None, overrides=(), samples: int = 3) -> dict:
    config = as_config(config, overrides)
    train_read, _ = read_data(config)
    path = resolve_model_path(config.model.path)
    tokenizer = load_tokenizer(config.model, path)
    ensure_pad_token(tokenizer)
    template = get_template(config.data.template, tokenizer, model_type(path))
    max_length, system = config.data.max_length, config.data.system
    full = [encode_example(e, template, tokenizer, UNLIMITED, system) for e in train_read.examples]
    lengths = [len(s["input_ids"]) for s in full]
    shown = [encode_example(e, template, tokenizer, max_length, system) for e in train_read.examples[:samples]]
    return {
        "template": template.name,
        "samples": [
            {
                "text": tokenizer.decode(s["input_ids"]),
                "spans": spans(tokenizer, s),
                "input_ids": s["input_ids"],
                "labels": s["labels"],
                "truncated": s["truncated"],
            }
            for s in shown
        ],
        "stats": length_stats(lengths, max_length),
        "checks": checks(full, lengths, template, tokenizer, max_length),
        "skipped_records": len(train_read.skipped),
        "lengths": lengths,
    }


def spans(tokenizer, sample: dict) -> list[dict]:
    """The sample's text as runs of trained and masked tokens."""
    runs: list[dict] = []
    for token, label in zip(sample["input_ids"], sample["labels"]):
        trained = label != IGNORE_INDEX
        if runs and runs[-1]["trained"] == trained:
            runs[-1]["ids"].append(token)
        else:
            runs.append({"trained": trained, "ids": [token]})
    return [{"trained": r["trained"], "text": tokenizer.decode(r["ids"])} for r in runs]


def length_stats(lengths: list[int], max_length: int) -> dict:
    ordered = sorted(lengths)
    mean = sum(ordered) / len(ordered)
    q1, q3 = percentile(ordered, 25), percentile(ordered, 75)
    kept = [n for n in ordered if n <= q3 + 1.5 * (q3 - q1)]  # outliers beyond Tukey's fence dropped
    rule = 1.5 * sum(kept) / len(kept)
    return {
        "count": len(ordered),
        "mean": round(mean, 1),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "max": ordered[-1],
        "truncated": sum(n > max_length for n in ordered),
        "max_length": max_length,
        "recommended_max_length": int(math.ceil(rule / 8) * 8),  # the tutorials' 1.5 x mean, to a multiple of 8
    }


def percentile(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def checks(full: list[dict], lengths: list[int], template, tokenizer, max_length: int) -> list[dict]:
    stops = set(template.stop_ids(tokenizer))
    unstopped = [
        i for i, s in enumerate(full) if len(s["input_ids"]) <= max_length and not (s["labels"] and s["labels"][-1] in stops)
    ]
    results = [
        {
            "check": "every sample that fits ends in a trained stop token",
            "ok": not unstopped,
            "detail": f"{len(unstopped)} do not (first: #{unstopped[0]})" if unstopped else f"stop ids {sorted(stops)}",
        }
    ]
    results.append(padding_check(full[:8], tokenizer, max_length))
    own = getattr(tokenizer, "chat_template", None)
    results.append(
        {
            "check": "the template is the model's own chat template",
            "ok": template.name == "native" or not own,
            "detail": "the tokenizer has no chat template"
            if not own
            else f"data.template is {template.name}; the model's own is native: serve the result with the same template",
        }
    )
    return results


def padding_check(samples: list[dict], tokenizer, max_length: int) -> dict:
    """Collate a batch as training does (right padding) and look at the labels under the padding."""
    cut = [{"input_ids": s["input_ids"][:max_length], "labels": s["labels"][:max_length]} for s in samples]
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)(cut)
    labelled_padding = int(((batch["attention_mask"] == 0) & (batch["labels"] != IGNORE_INDEX)).sum())
    return {
        "check": "no padding is labelled",
        "ok": labelled_padding == 0,
        "detail": f"{labelled_padding} padded positions labelled",
    }


def write_histogram(lengths: list[int], max_length: int, path: Path, width: int = 640, height: int = 240) -> Path:
    """A bar chart of sample lengths as a PNG (no plotting library needed): 64 bins from 0 to the longest
    sample; bars grey, bins beyond data.max_length red."""
    bins = 64
    top = max(max(lengths), max_length, 1)
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, n * bins // (top + 1))] += 1
    tallest = max(counts)
    bar = width // bins
    pixels = bytearray(b"\xff" * (width * height * 3))
    for b, count in enumerate(counts):
        color = b"\xd0\x30\x30" if (b + 1) * (top + 1) / bins > max_length else b"\x70\x70\x70"
        bar_height = round(count / tallest * (height - 10)) if tallest else 0
        for y in range(height - bar_height, height):
            for x in range(b * bar, b * bar + bar - 1):
                pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3] = color
    rows = b"".join(b"\x00" + bytes(pixels[y * width * 3 : (y + 1) * width * 3]) for y in range(height))
    write_file_whole(
        path,
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b""),
    )
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
