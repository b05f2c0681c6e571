"""Exact encodings: the prompt is masked, the answer and its EOS id are trained, truncation drops the EOS."""

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from helpers import qwen_tokenizer_dir
from llm_tuning.data.encode import IGNORE_INDEX, encode_example, encode_examples
from llm_tuning.data.records import Example, user_message
from llm_tuning.data.templates import PLAIN, get_template, resolve_template_name
from llm_tuning.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def record(instruction="Who are you?", input="", output="I am TuneBot."):
    messages = ({"role": "user", "content": user_message(instruction, input)}, {"role": "assistant", "content": output})
    return Example(messages, where="test")


def test_plain_template_exact_ids(tokenizer):
    sample = encode_example(record(input="in English"), PLAIN, tokenizer, max_length=512)
    prompt = ids(tokenizer, "Human: Who are you?\nin English\n\nAssistant: ")
    answer = ids(tokenizer, "I am TuneBot.")
    assert sample["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert sample["labels"] == [IGNORE_INDEX] * len(prompt) + answer + [tokenizer.eos_token_id]
    assert sample["truncated"] is False


def test_plain_template_empty_input_has_no_blank_line(tokenizer):
    sample = encode_example(record(), PLAIN, tokenizer, max_length=512)
    text = tokenizer.decode(sample["input_ids"])
    assert text == "Human: Who are you?\n\nAssistant: I am TuneBot." + tokenizer.eos_token


def test_native_template_trains_answer_and_eos_only(tokenizer):
    template = get_template("native", tokenizer)
    sample = encode_example(record(), template, tokenizer, max_length=512)
    assert sample["input_ids"][-1] == tokenizer.eos_token_id
    assert sample["labels"][-1] == tokenizer.eos_token_id
    trained = [t for t, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX]
    masked = [t for t, label in zip(sample["input_ids"], sample["labels"]) if label == IGNORE_INDEX]
    assert tokenizer.decode(masked) == "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    # Qwen3's template writes an empty thinking block before every answer; it is part of the answer.
    assert tokenizer.decode(trained) == "<think>\n\n</think>\n\nI am TuneBot.<|im_end|>"


def test_truncation_cuts_at_max_length_without_eos(tokenizer):
    full = encode_example(record(output="one two three four five six seven eight"), PLAIN, tokenizer, 512)
    cut = encode_example(record(output="one two three four five six seven eight"), PLAIN, tokenizer, 12)
    assert cut["truncated"] is True
    assert cut["input_ids"] == full["input_ids"][:12] and cut["labels"] == full["labels"][:12]
    assert tokenizer.eos_token_id not in cut["labels"]


def test_samples_without_trained_tokens_are_dropped_and_counted(tokenizer):
    long_prompt = record(instruction="word " * 40)
    data = encode_examples([long_prompt, record(output="x " * 30), record()], PLAIN, tokenizer, max_length=20)
    assert data.dropped == ["test"]
    assert len(data.samples) == 2 and data.truncated == 1


def test_auto_template(tokenizer):
    assert resolve_template_name("auto", tokenizer) == "native"
    plain = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    plain.chat_template = None
    assert resolve_template_name("auto", plain) == "plain"
    with pytest.raises(UserError, match="no chat template"):
        resolve_template_name("native", plain)


def test_padding_is_never_trained_even_when_pad_is_eos(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    tokenizer.pad_token = tokenizer.eos_token  # the Llama habit
    tokenizer.padding_side = "right"
    short = encode_example(record(output="Hi."), PLAIN, tokenizer, 512)
    long = encode_example(record(output="A much longer answer than the other one."), PLAIN, tokenizer, 512)
    for s in (short, long):
        s.pop("truncated")
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)([short, long])
    n = len(short["input_ids"])
    assert batch["input_ids"].shape[1] == len(long["input_ids"])
    assert torch.all(batch["input_ids"][0, n:] == tokenizer.eos_token_id)  # right padding, with EOS
    assert torch.all(batch["labels"][0, n:] == IGNORE_INDEX)  # ... never labelled
    assert batch["labels"][0, n - 1] == tokenizer.eos_token_id  # while the real EOS stays trained
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)


def test_tokenisation_is_cached_under_a_key_of_everything_that_changes_it(tokenizer, tmp_path):
    examples = [record(), record(output="Four.")]
    first = encode_examples(examples, PLAIN, tokenizer, 512, cache=tmp_path)
    cached = list(tmp_path.glob("*.arrow"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = encode_examples(examples, PLAIN, tokenizer, 512, cache=tmp_path)
    assert again.samples == first.samples == encode_examples(examples, PLAIN, tokenizer, 512).samples
    assert cached[0].stat().st_mtime_ns == stamp  # read back, not written again
    encode_examples(examples, PLAIN, tokenizer, 8, cache=tmp_path)  # another max length: another key
    encode_examples(examples, PLAIN, tokenizer, 512, system="Be brief.", cache=tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 3
