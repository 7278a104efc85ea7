"""HTTP plumbing of the serving API: API keys, the request size limit, per-route metrics.

* **API keys.** Settings hold SHA-256 digests only (``FUSIONREC_API_KEY_HASHES``); a request's key (header
  ``X-API-Key``, or ``Authorization: Bearer <key>``) is hashed and compared with every digest by
  :func:`hmac.compare_digest`, so neither the keys nor the comparison's timing leak. No digest configured: the API
  is open (the server warns at start).
* **Size limit.** A body larger than ``FUSIONREC_API_MAX_BODY_BYTES`` is refused with 413: at once when its
  ``Content-Length`` says so, else as soon as the streamed body passes the limit (:func:`read_body`).
* **Metrics.** :class:`MetricsMiddleware` wraps the whole app, so every response is counted, by the route template
  that matched (``/v1/users/{user_id}/recommendations``, never the raw path, so the labels stay few).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.security import APIKeyHeader

from fusionrec.apps.serve.metrics import ApiMetrics

__all__ = ["ApiKeyCheck", "MetricsMiddleware", "hash_key", "read_body"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key: what ``FUSIONREC_API_KEY_HASHES`` lists."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyCheck:
    """The FastAPI dependency that admits a request with a configured key (401 otherwise)."""

    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (or `Authorization: Bearer`).")

    def __init__(self, digests: tuple[bytes, ...]):
        self.digests = digests

    def admits(self, key: str | None) -> bool:
        if not self.digests:
            return True
        if not key:
            return False
        digest = hashlib.sha256(key.encode()).digest()
        ok = False
        for expected in self.digests:  # every digest compared, whichever matches
            ok |= hmac.compare_digest(digest, expected)
        return ok

    async def __call__(self, request: Request) -> None:
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token:
                key = token.strip()
        if not self.admits(key):
            raise HTTPException(
                401,
                "missing API key" if key is None else "wrong API key",
                headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
            )


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 once it passes ``limit`` bytes (chunked bodies included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class MetricsMiddleware:
    """Times and counts every HTTP response by route template; refuses an announced oversize body with 413."""

    def __init__(self, app: Callable, metrics: ApiMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                status = 413
                await _send_json(send, 413, {"detail": f"request body over the limit of {self.max_body_bytes:,} bytes"})
                return
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.observe(
                getattr(route, "path", None) or "unmatched", scope["method"], status, time.perf_counter() - started
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
