"""What every request passes before a route sees it: the API key (when the server has one) and the body's size
limit, checked as the body arrives, so that an oversized body is refused before it is all read."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse

from .protocol import APIError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than a prompt as long as any context


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Guard:
    """ASGI middleware: 401 without the right key on /v1/*, 413 for a body over `max_body` bytes."""

    def __init__(self, app, api_key: str | None = None, max_body: int = MAX_BODY_BYTES):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        refusal = self._key_refusal(scope["path"], headers)
        if refusal is None:
            body, refusal = await self._read_body(headers, receive)
        if refusal is not None:
            return await error_response(refusal)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client leaving, which streaming watches for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _key_refusal(self, path: str, headers: dict) -> APIError | None:
        if not self.api_key or not path.startswith("/v1"):
            return None
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        if not hmac.compare_digest(key.strip().encode("latin-1"), self.api_key.encode("latin-1", "replace")):
            return APIError(401, "invalid API key", code="invalid_api_key")
        return None

    async def _read_body(self, headers: dict, receive) -> tuple[bytes, APIError | None]:
        too_large = APIError(413, f"the request body is larger than {self.max_body} bytes", code="request_too_large")
        declared = headers.get(b"content-length", b"0").decode("latin-1")
        if not declared.isdigit():
            return b"", APIError(400, "the Content-Length header is not a number")
        if int(declared) > self.max_body:
            return b"", too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the whole body
                return b"", APIError(400, "the request body ended early")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return b"", too_large
            more = message.get("more_body", False)
        return b"".join(chunks), None
