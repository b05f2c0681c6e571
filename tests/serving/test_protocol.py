"""Requests are checked strictly, and every mistake is a 400 in OpenAI's error format that names the field."""

import json

import pytest

from llm_tuning.serving.protocol import APIError, ChatRequest, CompletionRequest, parse_request, token_budget

HELLO = [{"role": "user", "content": "hi"}]


def chat(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": HELLO, **fields}).encode()


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"model": "m", "messages": [], "temperature": NaN}', None, "not valid JSON"),
        (b"[1, 2]", None, "a JSON object"),
        (b'{"messages": []}', "model", "Field required"),
        (json.dumps({"model": "m", "messages": "hi"}).encode(), "messages", "valid list"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages", "at least 1"),
        (chat(max_tokens="5"), "max_tokens", "valid integer"),
        (chat(max_tokens=True), "max_tokens", "valid integer"),
        (chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (chat(temperature=2.5), "temperature", "less than or equal to 2"),
        (chat(temperature="hot"), "temperature", "valid number"),
        (chat(top_p=0), "top_p", "greater than 0"),
        (chat(seed=1.5), "seed", "valid integer"),
        (chat(stop=5), "stop", "should be a string or a list of strings"),
        (chat(stop=["a", 1]), "stop", "should be a string or a list of strings"),
        (chat(n=2), "n", "n=1"),
        (chat(frequency_penalty=0.5), "frequency_penalty", "not supported"),
        (chat(logprobs=True), "logprobs", "not supported"),
        (json.dumps({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).encode(), "messages.0.role", "Input"),
        (json.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}).encode(), "messages.0.content", "a string"),
    ],
)
def test_malformed_chat_requests_are_400_naming_the_field(body, param, fragment):
    with pytest.raises(APIError) as caught:
        parse_request(body, ChatRequest)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and fragment in error["message"], error
    assert error["message"].startswith(f"{param}: ") if param else True


def test_a_valid_chat_request_and_its_turns():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Who "}, {"type": "text", "text": "are you?"}]},
        {"role": "assistant", "content": "TuneBot."},
        {"role": "user", "content": "Again?"},
    ]
    request = parse_request(chat(messages=messages, stop="END", temperature=0, max_tokens=7, unknown_field=1), ChatRequest)
    turns, system = request.turns()
    assert system == "Be brief." and [t["content"] for t in turns] == ["Who are you?", "TuneBot.", "Again?"]
    assert request.stop_strings() == ("END",) and request.max_tokens == 7 and request.temperature == 0.0


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message must be a user turn"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}], "first"),
    ],
)
def test_conversations_the_template_cannot_render_are_refused(messages, fragment):
    with pytest.raises(APIError, match=fragment):
        parse_request(chat(messages=messages), ChatRequest).turns()


def test_stop_strings_are_bounded():
    with pytest.raises(APIError, match="up to 4 non-empty"):
        parse_request(chat(stop=list("abcde")), ChatRequest).stop_strings()
    with pytest.raises(APIError, match="up to 4 non-empty"):
        parse_request(chat(stop=[""]), ChatRequest).stop_strings()


@pytest.mark.parametrize(
    "prompt, ok",
    [("text", True), (["text"], True), ([1, 2, 3], True), (["a", "b"], False), ([1, "a"], False), ({"a": 1}, False)],
)
def test_completion_prompts(prompt, ok):
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    if ok:
        assert parse_request(body, CompletionRequest).prompt == prompt
    else:
        with pytest.raises(APIError) as caught:
            parse_request(body, CompletionRequest)
        assert caught.value.param.startswith("prompt")


def test_token_budget_within_the_context():
    assert token_budget(None, 10, 512, 256) == 256
    assert token_budget(None, 400, 512, 256) == 112
    assert token_budget(100, 10, None, 256) == 100
    with pytest.raises(APIError) as caught:
        token_budget(None, 512, 512, 256)
    assert caught.value.code == "context_length_exceeded" and "512 tokens" in caught.value.message
    with pytest.raises(APIError, match="exceed the model's context of 512 tokens"):
        token_budget(200, 400, 512, 256)
