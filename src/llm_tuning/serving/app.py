"""The routes: chat and raw completions (plain or streamed as server-sent events), the models, the health.

Every failure answers in OpenAI's error format (protocol.APIError): a bad request is a 400 (FastAPI's 422 is not
used), never a 500, and no response carries a stack trace; the server's own faults are a 500 that says no more
than their first line, with the traceback on the server's stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from jinja2 import TemplateError
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from ..errors import UserError, first_line
from ..generation import GenerationOptions
from .batching import Batcher, QueueFull
from .guard import MAX_BODY_BYTES, Guard, error_response
from .models import ModelRegistry, Served
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    choice,
    completion_id,
    parse_request,
    response_object,
    token_budget,
    usage,
)
from .rows import Job

DEFAULT_MAX_TOKENS = GenerationOptions().max_new_tokens  # as `llm-tuning generate`, within the context
RETRY_AFTER_SECONDS = 1


def build_app(registry: ModelRegistry, batcher: Batcher, api_key: str | None = None, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="llm-tuning", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=api_key, max_body=max_body)
    started = int(time.time())
    tokenizer, template = registry.session.tokenizer, registry.session.template

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):  # an unknown path, a wrong method
        return error_response(APIError(error.status_code, str(error.detail), headers=error.headers))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        return error_response(APIError(400, f"invalid request: {error.errors()[0].get('msg', 'malformed')}"))

    @app.exception_handler(Exception)
    async def fault(request, error: Exception):
        traceback.print_exception(error, file=sys.stderr)
        return error_response(APIError(500, f"internal error: {first_line(error)}", type="server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(registry.served), **batcher.status()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(served, started) for served in registry.served.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return model_card(find(registry, name), started)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_request(await request.body(), ChatRequest)
        served = find(registry, body.model)
        turns, system = body.turns()
        try:
            prompt_ids = template.prompt_ids(tokenizer, turns, system if system is not None else served.config.data.system)
        except (UserError, TemplateError, ValueError) as e:
            raise APIError(400, f"messages: {first_line(e)}", param="messages") from None
        return await answer(body, served, prompt_ids, body.max_completion_tokens or body.max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse_request(await request.body(), CompletionRequest)
        served = find(registry, body.model)
        prompt = (
            body.prompt[0] if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str) else body.prompt
        )
        prompt_ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
        if not prompt_ids:
            raise APIError(400, "prompt: empty", param="prompt")
        if not all(0 <= i < len(tokenizer) for i in prompt_ids):
            raise APIError(400, f"prompt: token ids must be from 0 to {len(tokenizer) - 1}", param="prompt")
        return await answer(body, served, prompt_ids, body.max_tokens, chat=False)

    async def answer(body, served: Served, prompt_ids: list[int], max_tokens: int | None, chat: bool):
        job = Job(
            served,
            prompt_ids,
            token_budget(max_tokens, len(prompt_ids), registry.context_length, DEFAULT_MAX_TOKENS),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=body.stop_strings(),
            strip=chat,
            loop=asyncio.get_running_loop(),
        )
        try:
            batcher.submit(job)
        except QueueFull:
            raise APIError(
                503,
                f"the server is busy: {batcher.max_queue} requests are waiting; retry shortly",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        reply = Reply(job, completion_id(chat), chat, served.name)
        if body.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(reply.stream(body.include_usage()), media_type="text/event-stream", headers=headers)
        return await reply.whole()

    return app


def find(registry: ModelRegistry, name: str) -> Served:
    served = registry.get(name)
    if served is None:
        raise APIError(
            404, f"model '{name}' is not served here; served: {', '.join(registry.served)}", param="model", code="model_not_found"
        )
    return served


def model_card(served: Served, created: int) -> dict:
    return {"id": served.name, "object": "model", "created": created, "owned_by": "llm-tuning", "parent": served.parent}


class Reply:
    """A job's events as a response: whole, or streamed as server-sent events ending with `data: [DONE]`."""

    def __init__(self, job: Job, id: str, chat: bool, model: str):
        self.job, self.id, self.chat, self.model = job, id, chat, model

    def usage(self, tokens: int) -> dict:
        return usage(len(self.job.prompt_ids), tokens)

    async def whole(self) -> dict:
        parts = []
        try:
            while (event := await self.job.events.get())[0] == "text":
                parts.append(event[1])
        finally:
            self.job.cancelled = True  # nothing more to do for it, or its client left while it waited
        if event[0] == "error":
            raise APIError(500, event[1], type="server_error")
        body = choice(self.chat, "".join(parts), event[1])
        return response_object(self.id, self.chat, self.model, [body], self.usage(event[2]))

    async def stream(self, include_usage: bool):
        try:
            if self.chat:
                yield self._chunk([choice(True, "", None, delta=True, role=True)])
            while (event := await self.job.events.get())[0] == "text":
                yield self._chunk([choice(self.chat, event[1], None, delta=True)])
            if event[0] == "error":
                yield f"data: {json.dumps(APIError(500, event[1], type='server_error').body())}\n\n"
            else:
                yield self._chunk([choice(self.chat, None if self.chat else "", event[1], delta=True)])
                if include_usage:
                    yield self._chunk([], self.usage(event[2]))
            yield "data: [DONE]\n\n"
        finally:
            self.job.cancelled = True  # the client may have left: stop generating for it

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = response_object(self.id, self.chat, self.model, choices, usage, chunk=True)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
