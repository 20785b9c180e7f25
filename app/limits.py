"""Bounded request bodies: refused from Content-Length before reading, streamed ones stopped at the limit.

Every request may carry at most :data:`MAX_BODY` bytes, but uploads (``POST /api/uploads``), which
may carry the server's upload limit plus room for the multipart envelope.
"""

from __future__ import annotations

import json

from fastapi import FastAPI

MAX_BODY = 64 * 1024  # every request but an upload
UPLOAD_PATH = "/api/uploads"
ENVELOPE = 64 * 1024  # multipart headers and the form fields around an upload's bytes


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class BodyLimit:
    """ASGI middleware: answers 413 (or 400 for a malformed Content-Length) as JSON ``{"error": ...}``."""

    def __init__(self, inner, max_upload_bytes: int) -> None:
        self.inner = inner
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        limit = self.max_upload_bytes + ENVELOPE if scope["path"] == UPLOAD_PATH else MAX_BODY
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await send_json(send, 400, "malformed Content-Length header")
            if too_big:
                return await send_json(send, 413, f"request body over the limit of {limit:,} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.inner(scope, limited, send)
        except BodyTooLarge as exc:
            await send_json(send, 413, f"request body over the limit of {exc.limit:,} bytes")


def install_body_limit(app: FastAPI, max_upload_bytes: int) -> None:
    app.add_middleware(BodyLimit, max_upload_bytes=max_upload_bytes)


async def send_json(send, status: int, message: str) -> None:
    """A complete JSON error response sent straight through ASGI (before any route runs)."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
