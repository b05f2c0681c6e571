"""Turn examples into training samples: system, user and template tokens masked with -100, every assistant
turn and its stop token trained."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .records import Example

IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy skips
ENCODING_VERSION = "1"  # bump when the encoding itself changes, so that cached encodings are not reused


def encode_example(example: Example, template, tokenizer, max_length: int, system: str | None = None) -> dict:
    """input_ids and labels for one example; cut at max_length, in which case the final stop token is cut too
    (a truncated answer must not teach the model to stop mid-sentence). The example's own system prompt wins
    over `system` (data.system)."""
    input_ids: list[int] = []
    labels: list[int] = []
    segments = template.segments(tokenizer, list(example.messages), example.system or system)
    while segments and not segments[-1][1]:
        segments.pop()  # what follows the last answer (a newline between turns) teaches nothing
    for ids, trained in segments:
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    truncated = len(input_ids) > max_length
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


@dataclass
class EncodedData:
    samples: list[dict]  # {"input_ids", "labels"}
    truncated: int = 0  # samples cut at max_length (still trained, without their stop token)
    dropped: list[str] = field(default_factory=list)  # examples whose prompt alone filled max_length

    @property
    def tokens(self) -> int:
        return sum(len(s["input_ids"]) for s in self.samples)

    def fingerprint(self) -> str:
        """sha256 of every sample's tokens and labels, in order: a resumed run must train on the same ones."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(json.dumps([sample["input_ids"], sample["labels"]]).encode("ascii"))
        return digest.hexdigest()


def encode_examples(
    examples: list[Example], template, tokenizer, max_length: int, system: str | None = None, cache: Path | None = None
) -> EncodedData:
    """Encode every example; with `cache` (a folder), through datasets.map with its progress bar, stored under a
    key of everything that changes the result (examples, tokenizer, template, system prompt, max length), so
    the same data is tokenised once."""
    encoded = (
        _encode_cached(examples, template, tokenizer, max_length, system, cache)
        if cache
        else [encode_example(e, template, tokenizer, max_length, system) for e in examples]
    )
    data = EncodedData(samples=[])
    for example, sample in zip(examples, encoded):
        if all(label == IGNORE_INDEX for label in sample["labels"]):
            # Nothing left to learn from: training on it would only add a zero-weight row.
            data.dropped.append(example.where)
            continue
        data.truncated += sample["truncated"]
        data.samples.append({"input_ids": sample["input_ids"], "labels": sample["labels"]})
    return data


def _encode_cached(examples: list[Example], template, tokenizer, max_length: int, system: str | None, cache: Path) -> list[dict]:
    from datasets import Dataset  # slow to import; only the cached encoding of a training run needs it

    key = encoding_key(examples, template, tokenizer, max_length, system)
    path = cache / f"{key}.arrow"
    if path.is_file():
        return Dataset.from_file(str(path)).to_list()
    cache.mkdir(parents=True, exist_ok=True)
    rows = Dataset.from_list([{"messages": list(e.messages), "system": e.system or ""} for e in examples])

    def encode(row):
        example = Example(messages=tuple(row["messages"]), where="", system=row["system"] or None)
        return encode_example(example, template, tokenizer, max_length, system)

    mapped = rows.map(encode, remove_columns=rows.column_names, cache_file_name=str(path), new_fingerprint=key, desc="tokenize")
    return mapped.to_list()


def encoding_key(examples: list[Example], template, tokenizer, max_length: int, system: str | None) -> str:
    vocabulary = (
        tokenizer.backend_tokenizer.to_str()
        if hasattr(tokenizer, "backend_tokenizer")
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    content = json.dumps([[e.messages, e.system] for e in examples], ensure_ascii=False)
    parts = [
        ENCODING_VERSION,
        template.name,
        str(system),
        str(max_length),
        str(tokenizer.eos_token_id),
        str(getattr(tokenizer, "chat_template", None)),
        vocabulary,
        content,
    ]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]
