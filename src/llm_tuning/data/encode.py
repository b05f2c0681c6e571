"""Turn examples into training samples: system, user and template tokens masked with -100, every assistant
turn and its stop token trained."""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import Example

IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy skips


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


def encode_examples(examples: list[Example], template, tokenizer, max_length: int, system: str | None = None, progress: bool = False) -> EncodedData:
    data = EncodedData(samples=[])
    for example in _progress(examples, progress):
        sample = encode_example(example, template, tokenizer, max_length, system)
        if all(label == IGNORE_INDEX for label in sample["labels"]):
            # Nothing left to learn from: training on it would only add a zero-weight row.
            data.dropped.append(example.where)
            continue
        data.truncated += sample.pop("truncated")
        data.samples.append(sample)
    return data


def _progress(items: list, show: bool):
    if not show or len(items) < 1000:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="tokenize", unit="sample")
