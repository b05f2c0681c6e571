"""Text from generated tokens in whole characters: held back while a character is incomplete, dropped when the
answer ends inside one; stop strings and whitespace held back so that the pieces join to the final answer."""

import pytest
from transformers import AutoTokenizer

from helpers import qwen_tokenizer_dir
from llm_tuning.detokenize import INCOMPLETE, TextDecoder, decode_answer

# With the Qwen tokenizer each of these rare characters takes two tokens, the first an incomplete character.
RARE = "鬱鬱蔥蔥"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir())


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def feed(decoder, token_ids):
    pieces = [decoder.push(i) for i in token_ids]
    return pieces + [decoder.close()]


def test_split_characters_are_held_back_until_complete(tokenizer):
    token_ids = ids(tokenizer, RARE)
    assert INCOMPLETE in tokenizer.decode(token_ids[:1])  # the case this is about
    decoder = TextDecoder(tokenizer)
    pieces = feed(decoder, token_ids)
    assert "".join(pieces) == decoder.text == RARE
    assert all(INCOMPLETE not in piece for piece in pieces)
    assert pieces[0] == "" and pieces[1] == "鬱"  # nothing until the first character is whole


def test_an_answer_cut_inside_a_character_ends_before_it(tokenizer):
    token_ids = ids(tokenizer, "我是" + RARE)
    for cut in range(1, len(token_ids) + 1):
        decoder = TextDecoder(tokenizer)
        text = "".join(feed(decoder, token_ids[:cut]))
        assert INCOMPLETE not in text and ("我是" + RARE).startswith(text)
        assert decode_answer(tokenizer, token_ids[:cut], stop_ids=[]) == text
    assert any(tokenizer.decode(token_ids[:cut]).endswith(INCOMPLETE) for cut in range(len(token_ids)))


def test_stop_strings_cut_the_text_and_are_held_back_while_they_may_begin(tokenizer):
    decoder = TextDecoder(tokenizer, stop=["END", "\n\n"])
    pieces = feed(decoder, ids(tokenizer, "one two EN three EN") + ids(tokenizer, "D four"))
    assert decoder.stopped and decoder.text == "".join(pieces) == "one two EN three "
    assert not any(piece.endswith("E") for piece in pieces[:-1] if piece)  # "E" could have begun "END": held back


def test_strip_for_chat_answers_keeps_inner_whitespace(tokenizer):
    decoder = TextDecoder(tokenizer, strip=True)
    pieces = feed(decoder, ids(tokenizer, "  Hello  world \n"))
    assert "".join(pieces) == decoder.text == "Hello  world"
    raw = TextDecoder(tokenizer)
    assert "".join(feed(raw, ids(tokenizer, " Paris is \n"))) == " Paris is \n"  # a raw completion keeps its spaces


def test_decode_answer_stops_at_the_first_stop_token(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    token_ids = ids(tokenizer, " Bonjour ") + [end] + ids(tokenizer, "after")
    assert decode_answer(tokenizer, token_ids, [end]) == "Bonjour"
