"""Family templates: exact formats, special tokens by id, multi-turn masking, the system prompt, and the
Llama-2 EOS trap with a sentencepiece tokenizer built here."""

import pytest
from transformers import AutoTokenizer

from helpers import qwen_tokenizer_dir
from llm_tuning.data.encode import IGNORE_INDEX, encode_example
from llm_tuning.data.records import Example
from llm_tuning.data.templates import get_template, resolve_template_name
from llm_tuning.errors import UserError

CONVERSATION = Example(
    messages=(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ),
    where="test",
)


@pytest.fixture(scope="module")
def qwen():
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    return tokenizer


def trained_and_masked(tokenizer, sample) -> tuple[list[str], str]:
    """The trained spans (decoded, one per run of labelled tokens) and the whole text."""
    spans, current = [], []
    for token, label in zip(sample["input_ids"], sample["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans, tokenizer.decode(sample["input_ids"])


def test_chatml_trains_every_assistant_turn_and_masks_the_rest(qwen):
    sample = encode_example(CONVERSATION, get_template("chatml", qwen), qwen, 512, system="Be brief.")
    spans, text = trained_and_masked(qwen, sample)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"
    )
    assert spans == ["hello<|im_end|>", "4<|im_end|>"]


def test_llama3_format_with_special_tokens_by_id(qwen):
    template = get_template("llama3", qwen)
    sample = encode_example(CONVERSATION, template, qwen, 512, system="Be brief.")
    spans, text = trained_and_masked(qwen, sample)
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert text == (
        "<|begin_of_text|>"
        + header.format("system")
        + "Be brief.<|eot_id|>"
        + header.format("user")
        + "hi<|eot_id|>"
        + header.format("assistant")
        + "hello<|eot_id|>"
        + header.format("user")
        + "2+2?<|eot_id|>"
        + header.format("assistant")
        + "4<|eot_id|>"
    )
    assert spans == ["hello<|eot_id|>", "4<|eot_id|>"]
    assert sample["input_ids"][0] == qwen.convert_tokens_to_ids("<|begin_of_text|>")
    assert template.stop_ids(qwen) == sorted({qwen.eos_token_id, qwen.convert_tokens_to_ids("<|eot_id|>")})


def test_a_missing_special_token_is_a_clear_error(qwen):
    with pytest.raises(UserError, match=r"template chatglm3 needs the special token '\[gMASK\]', which this tokenizer lacks"):
        encode_example(CONVERSATION, get_template("chatglm3", qwen), qwen, 512)


def test_chatglm3_format(qwen):
    glm = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    glm.add_special_tokens({"additional_special_tokens": ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>"]})
    sample = encode_example(CONVERSATION, get_template("chatglm3", glm), glm, 512)
    spans, text = trained_and_masked(glm, sample)
    eos = glm.eos_token
    assert text == f"[gMASK]sop<|user|>\nhi<|assistant|>\nhello{eos}<|user|>\n2+2?<|assistant|>\n4{eos}"
    assert spans == [f"\nhello{eos}", f"\n4{eos}"]


@pytest.fixture(scope="module")
def llama2_tokenizer(tmp_path_factory):
    """A real sentencepiece model, trained here on a few lines, behind transformers' LlamaTokenizer."""
    import json

    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(
            [
                "Who are you? I am TuneBot, a helpful assistant.",
                "What is two plus two? Four.",
                "[INST] <<SYS>> Be brief. <</SYS>> [/INST]",
            ]
            * 50
        )
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=120,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    settings = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return AutoTokenizer.from_pretrained(folder), spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_llama2_eos_is_the_id_never_the_text(llama2_tokenizer):
    tokenizer, processor = llama2_tokenizer
    # The trap: a literal "</s>" appended to the text is three ordinary pieces to sentencepiece, not the EOS.
    trap = processor.encode("Four.</s>", out_type=str)
    assert trap[-3:] == ["</", "s", ">"] and tokenizer.eos_token_id not in processor.encode("Four.</s>")
    example = Example(
        messages=({"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}), where="test"
    )
    sample = encode_example(example, get_template("llama2", tokenizer), tokenizer, 512, system="Be brief.")
    assert sample["input_ids"][0] == tokenizer.bos_token_id
    assert sample["input_ids"][-1] == sample["labels"][-1] == tokenizer.eos_token_id == 2
    assert "</" not in tokenizer.convert_ids_to_tokens(sample["input_ids"])
    spans, text = trained_and_masked(tokenizer, sample)
    # (this small vocabulary has no newline piece, so compare without whitespace)
    assert "".join(text.split()) == "<s>[INST]<<SYS>>Bebrief.<</SYS>>Whatistwoplustwo?[/INST]Four.</s>"
    assert "".join(spans[0].split()) == "Four.</s>"
    assert resolve_template_name("auto", tokenizer, "llama") == "llama2"  # no chat template: the family's format


def test_auto_picks_the_family_format_without_a_chat_template(qwen):
    plain = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    plain.chat_template = None
    assert resolve_template_name("auto", plain, "qwen2") == "chatml"
    assert resolve_template_name("auto", plain, "gpt2") == "plain"
    assert resolve_template_name("auto", qwen, "qwen2") == "native"  # the model's own template first


SPECIALS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "[gMASK]",
    "sop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<s>",
]
CONVERSATIONS = [
    [{"role": "user", "content": "你好，请问你是谁？"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}],
]


@pytest.fixture(scope="module")
def every_family():
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tokenizer


@pytest.mark.parametrize("name", ["plain", "llama2", "llama3", "chatglm3", "chatml", "native"])
@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("turns", [0, 1], ids=["one-turn", "multi-turn"])
def test_chat_template_renders_the_training_prompt_token_for_token(every_family, name, system, turns):
    """A merged or exported model carries its template as Jinja; rendered and tokenised whole, it must give the ids
    training encoded (the system prompt as data.system, or as the conversation's own first turn)."""
    template = get_template(name, every_family)
    messages = CONVERSATIONS[turns]
    expected = template.prompt_ids(every_family, messages, system)
    if name == "plain" and turns:
        pytest.skip("plain tokenises 'Assistant: ' and the answer apart, as the tutorials do; whole, they merge")
    jinja = template.chat_template(every_family, default_system=system)
    for given in (messages, [{"role": "system", "content": system}] + messages if system else messages):
        text = every_family.apply_chat_template(given, chat_template=jinja, tokenize=False, add_generation_prompt=True)
        assert every_family(text, add_special_tokens=False)["input_ids"] == expected, text
