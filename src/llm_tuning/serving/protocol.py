"""The OpenAI API as this server speaks it: the request bodies it accepts (checked strictly: a wrong type or a value
out of range is a 400, never coerced), the error body every failure answers with, and the response objects."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP_STRINGS = 4  # as OpenAI's API


class APIError(Exception):
    """A failure answered in OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Request(BaseModel):
    """What chat and raw completions share: the model, sampling, stopping, streaming."""

    model_config = ConfigDict(strict=True, extra="ignore")  # fields of other APIs' dialects are ignored

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None

    def refusals(self) -> list[tuple[str, bool, str]]:
        """(field, refused?, why) for settings this server cannot honour."""
        return [
            ("n", self.n not in (None, 1), "only one choice per request (n=1); send several requests instead"),
            ("presence_penalty", bool(self.presence_penalty), "presence_penalty is not supported (only 0)"),
            ("frequency_penalty", bool(self.frequency_penalty), "frequency_penalty is not supported (only 0)"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
        ]

    def stop_strings(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_STRINGS or not all(stop):
            raise APIError(400, f"stop: up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
        return tuple(stop)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None
    tools: list | None = None

    def refusals(self) -> list[tuple[str, bool, str]]:
        return super().refusals() + [
            ("logprobs", bool(self.logprobs), "logprobs are not supported"),
            ("tools", bool(self.tools), "tools (function calling) are not supported"),
        ]

    def turns(self) -> tuple[list[dict], str | None]:
        """The conversation for the template (user and assistant turns) and its system prompt, if it has one."""
        system = None
        turns = []
        for index, message in enumerate(self.messages):
            if message.role in ("system", "developer"):
                if index > 0:
                    raise APIError(400, "messages: a system message may only come first", param=f"messages.{index}")
                system = message.text()
            else:
                turns.append({"role": message.role, "content": message.text()})
        if not turns or turns[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must be a user turn", param="messages")
        return turns, system


class CompletionRequest(Request):
    prompt: str | list[str] | list[int]
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def prompt_count(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) else 1

    def refusals(self) -> list[tuple[str, bool, str]]:
        return super().refusals() + [
            ("prompt", self.prompt_count() != 1, "one prompt per request: a string, a list of one string, or token ids"),
            ("echo", bool(self.echo), "echo is not supported"),
            ("suffix", bool(self.suffix), "suffix is not supported"),
            ("best_of", self.best_of not in (None, 1), "best_of is not supported (only 1)"),
            ("logprobs", self.logprobs is not None, "logprobs are not supported"),
        ]


# what a field of several types should be, for messages clearer than pydantic's one per type
UNION_HINTS = {
    "stop": "a string or a list of strings",
    "prompt": "a string, a list of one string, or a list of token ids",
    "content": "a string or a list of {'type': 'text', 'text': ...} parts",
}
TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def parse_request(body: bytes, model: type[Request]) -> Request:
    """The request `body` as `model`, or an APIError(400) naming the first thing wrong with it."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
    for field, refused, why in request.refusals():
        if refused:
            raise APIError(400, f"{field}: {why}", param=field)
    return request


def validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    # pydantic names the member of a union it tried ("str", "list[int]") in the location: leave those out
    markers = [
        part for part in first["loc"] if isinstance(part, str) and (part in TYPE_NAMES or "[" in part or part[0].isupper())
    ]
    path = [str(part) for part in first["loc"] if part not in markers]
    field = next((part for part in reversed(path) if not part.isdigit()), "")
    message = f"should be {UNION_HINTS[field]}" if markers and field in UNION_HINTS else first["msg"]
    param = ".".join(path) or None
    return APIError(400, f"{param}: {message}" if param else message, param=param)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def completion_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def response_object(id: str, chat: bool, model: str, choices: list[dict], usage: dict | None = None, chunk=False) -> dict:
    """A whole response, or one chunk of a stream."""
    kind = "text_completion" if not chat else "chat.completion.chunk" if chunk else "chat.completion"
    body = {"id": id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def choice(chat: bool, text: str | None, finish_reason: str | None, delta: bool = False, role: bool = False) -> dict:
    if not chat:
        return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    content = {"role": "assistant"} if role or not delta else {}
    if text is not None:
        content["content"] = text
    return {"index": 0, ("delta" if delta else "message"): content, "finish_reason": finish_reason, "logprobs": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_budget(requested: int | None, prompt_tokens: int, context: int | None, default: int) -> int:
    """How many tokens the answer may have: `requested` (max_tokens), or `default` within the model's context."""
    if context is not None and prompt_tokens >= context:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens; the model's context is {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    room = None if context is None else context - prompt_tokens
    if requested is None:
        return default if room is None else min(default, room)
    if room is not None and requested > room:
        raise APIError(
            400,
            f"the prompt ({prompt_tokens} tokens) and max_tokens ({requested}) exceed the model's context of {context} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested
