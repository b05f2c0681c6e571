"""ChatGLM3's tokenizer without its code: the same ids as THUDM's tokenizer (the fixture's, computed by the original
tokenization_chatglm.py) and as sentencepiece itself, the special tokens at their ids, the chatglm3 template giving
exactly the samples the tutorial's code builds, and the conversion cached."""

import pytest
import sentencepiece as spm

from helpers import CHATGLM3_TINY, chatglm3_expected, train_sentencepiece
from llm_tuning.data.encode import IGNORE_INDEX, encode_example
from llm_tuning.data.records import Example
from llm_tuning.data.templates import get_template
from llm_tuning.errors import UserError
from llm_tuning.models.chatglm import tokenization
from llm_tuning.models.chatglm.tokenization import SPECIAL_TOKENS, chatglm3_tokenizer, convert

LINES = [
    "Who are you? I am TuneBot, a helpful assistant.",
    "你好，请介绍一下你自己。我是一个助手。",
    "def add(a, b):    return a + b  # two  spaces",
    "Numbers 12345, prices $3.50 and 99%; ＡＢＣ full-width, ﬁ ligature.",
]
TEXTS = LINES + ["", " ", "  leading", "trailing  ", "a\n\nb\tc", "emoji 🙂👍🏽", "sop eop [gMASK] <|user|> </s> <s>", "①②③ ÀÉÎ"]


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    return convert(CHATGLM3_TINY / "tokenizer.model")


def test_ids_and_text_equal_the_original_tokenizer(glm):
    expected = chatglm3_expected()
    for case in expected["texts"]:
        ids = glm(case["text"], add_special_tokens=False)["input_ids"]
        assert ids == case["encode"], case["text"]  # SPTokenizer.encode: sentencepiece's ids
        assert glm(case["text"])["input_ids"] == case["call"]  # tokenizer(text): [gMASK] sop first
        assert glm.decode(ids) == case["decode"]
    assert {token: glm.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS} == expected["special_tokens"]
    assert list(expected["special_tokens"].values()) == list(range(700, 709))  # right after the 700 pieces
    assert (glm.eos_token_id, glm.pad_token_id, glm.padding_side) == (expected["eos_token_id"], expected["pad_token_id"], "left")


@pytest.mark.parametrize(
    "options",
    [
        dict(
            model_type="bpe",
            vocab_size=500,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
        ),
        dict(model_type="bpe", vocab_size=500, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True),
        dict(model_type="unigram", vocab_size=325, byte_fallback=True, normalization_rule_name="nmt_nfkc"),
        dict(model_type="unigram", vocab_size=70, add_dummy_prefix=False, remove_extra_whitespaces=False),
    ],
    ids=["bpe-identity", "bpe-nfkc", "unigram-nfkc", "unigram-no-prefix"],
)
def test_any_sentencepiece_model_converts_to_the_same_ids(tmp_path, options):
    """The conversion follows what the model file declares (normalisation, whitespace, dummy prefix, byte fallback)."""
    model_file = train_sentencepiece(tmp_path, LINES, **options)
    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    converted = convert(model_file)
    for text in TEXTS:
        if options["model_type"] == "unigram" and "</s>" in text:
            continue  # a Unigram model may read "</s>" spelled out as the control piece (tokenization.py); BPE does not
        assert converted(text, add_special_tokens=False)["input_ids"] == processor.encode(text), repr(text)
    assert converted.convert_tokens_to_ids("sop") == processor.vocab_size() + 3


def test_the_chatglm3_template_builds_the_tutorials_samples(glm):
    """build_chat_input(query) + encode("\\n" + answer) + EOS, with the system turn as build_chat_input puts it;
    the answer and its EOS trained, the rest masked."""
    template = get_template("chatglm3", glm)
    for chat in chatglm3_expected()["chats"]:
        if any(turn["role"] == "assistant" for turn in chat["history"]):
            continue  # earlier answers: ours end in EOS as trained, THUDM's history does not (docs/models.md)
        system = next((turn["content"] for turn in chat["history"] if turn["role"] == "system"), None)
        messages = ({"role": "user", "content": chat["query"]}, {"role": "assistant", "content": chat["answer"]})
        sample = encode_example(Example(messages=messages, where="test"), template, glm, 512, system=system)
        assert sample["input_ids"] == chat["sample"]
        assert template.prompt_ids(glm, [messages[0]], system) == chat["prompt"]
        prompt_length = len(chat["prompt"])
        assert sample["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
        assert sample["labels"][prompt_length:] == chat["sample"][prompt_length:]
    assert chatglm3_expected()["chats"][0]["prompt"][:5] == [701, 703, 706, 380, 13]  # [gMASK] sop <|user|> ▁ \n


def test_the_template_auto_picks_chatglm3(glm):
    assert get_template("auto", glm, "chatglm").name == "chatglm3"


def test_the_conversion_is_cached_by_the_files_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path / "cache"))
    first = chatglm3_tokenizer(CHATGLM3_TINY / "tokenizer.model")
    [folder] = (tmp_path / "cache" / "tokenizers").iterdir()
    assert (folder / tokenization.COMPLETE_MARKER).is_file()
    monkeypatch.setattr(tokenization, "convert", lambda *a: pytest.fail("converted again"))
    again = chatglm3_tokenizer(CHATGLM3_TINY / "tokenizer.model")
    assert again.get_vocab() == first.get_vocab() and again("你好")["input_ids"] == first("你好")["input_ids"]


def test_a_file_that_is_not_sentencepiece_is_a_clear_error(tmp_path):
    fake = tmp_path / "tokenizer.model"
    fake.write_text("IQ== 0\nIg== 1\n")  # GLM-4's tokenizer.model is a tiktoken file like this
    with pytest.raises(UserError, match="is not a sentencepiece model: .*GLM-4's tiktoken tokenizer is not supported"):
        convert(fake)
