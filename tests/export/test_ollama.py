"""The Modelfile: Ollama's template renders the training prompt; unverified by Ollama itself (not installable
here), so checked against golden files, written by hand from each format's definition."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers import qwen_tokenizer_dir
from llm_tuning.data.templates import get_template
from llm_tuning.errors import UserError
from llm_tuning.export.ollama import as_format, modelfile

GOLDEN = Path(__file__).parent / "golden"
# SmolLM2's own template, in short: ChatML with a default system prompt
CHATML_WITH_DEFAULT = (
    "{%- if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are SmolBot.<|im_end|>\\n' }}{% endif %}"
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<s>"]})
    return tokenizer


@pytest.mark.parametrize("name, system", [("chatml", "Answer briefly."), ("llama2", "Be kind.")])
def test_modelfile_matches_the_golden_file(tokenizer, name, system):
    text = modelfile("model.gguf", get_template(name, tokenizer), tokenizer, system)
    assert text == (GOLDEN / f"{name}.Modelfile").read_text(encoding="utf-8")


def test_a_models_own_template_is_written_as_the_family_it_renders(tokenizer):
    tokenizer.chat_template = CHATML_WITH_DEFAULT
    fmt, system = as_format(get_template("native", tokenizer), tokenizer, None)
    assert fmt.name == "chatml" and system == "You are SmolBot."
    assert 'SYSTEM """You are SmolBot."""' in modelfile("m.gguf", get_template("native", tokenizer), tokenizer, None)


def test_a_template_of_no_known_family_is_refused(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + '>> ' + m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(UserError, match="matches none of plain, llama2, llama3, chatglm3, chatml"):
        as_format(get_template("native", tokenizer), tokenizer, None)
