"""Turn records into training samples: prompt tokens masked with -100, answer tokens and EOS trained."""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import Record

IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy skips


def encode_record(record: Record, template, tokenizer, max_length: int) -> dict:
    """input_ids and labels for one record; cut at max_length, in which case the final EOS is cut too
    (a truncated answer must not teach the model to stop mid-sentence)."""
    messages = [{"role": "user", "content": record.user_message()}]
    prompt = template.prompt_ids(tokenizer, messages)
    response = template.response_ids(tokenizer, messages, record.output)
    input_ids = prompt + response
    labels = [IGNORE_INDEX] * len(prompt) + response
    truncated = len(input_ids) > max_length
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


@dataclass
class EncodedData:
    samples: list[dict]  # {"input_ids", "labels"}
    truncated: int = 0  # samples cut at max_length (still trained, without EOS)
    dropped: list[str] = field(default_factory=list)  # records whose prompt alone filled max_length

    @property
    def tokens(self) -> int:
        return sum(len(s["input_ids"]) for s in self.samples)


def encode_records(records: list[Record], template, tokenizer, max_length: int) -> EncodedData:
    data = EncodedData(samples=[])
    for record in records:
        sample = encode_record(record, template, tokenizer, max_length)
        if all(label == IGNORE_INDEX for label in sample["labels"]):
            # Nothing left to learn from: training on it would only add a zero-weight row.
            data.dropped.append(record.where)
            continue
        data.truncated += sample.pop("truncated")
        data.samples.append(sample)
    return data
