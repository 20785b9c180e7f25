"""Who may talk to the server, and what every answer tells the browser.

ASGI middleware, outermost of the app's own, so that it runs before anything reads a body:

- **Host** (DNS rebinding): every request must name a host the server was told to serve
  (:class:`AllowedHosts`; ``histokg serve`` allows 127.0.0.1, localhost and [::1] on its port, plus
  ``--allowed-host``). A page on ``evil.example`` whose name an attacker re-points at 127.0.0.1 still
  sends ``Host: evil.example``, and is refused (400).
- **Origin** (CSRF): a state-changing request (POST, PUT, PATCH, DELETE) that comes from a browser
  must come from the app's own origin: an ``Origin`` header, when there is one, must be
  ``scheme://<the Host header>``; ``Origin: null`` (sandboxed frames, files) and
  ``Sec-Fetch-Site: cross-site``/``same-site`` are refused (403). Clients that are not browsers
  (curl, scripts) send neither header and are let through: the Host check still applies.
- **Headers** on every answer: ``X-Content-Type-Options: nosniff``, a Content-Security-Policy
  (:data:`CSP`: scripts, styles, fetches and frames from the app itself, images also from ``data:``,
  no inline script or style, no framing by anyone), ``X-Frame-Options: DENY`` for older browsers,
  ``Referrer-Policy: no-referrer`` and ``Cross-Origin-Resource-Policy: same-origin``. The OpenAPI
  page (``/docs``) loads Swagger UI from its CDN and starts it with one inline script: its policy
  (:func:`docs_csp`) allows that CDN and that one script by its hash, nothing else.

Errors are JSON ``{"error": ...}`` like every other error of the app.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI

from app.limits import send_json

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SWAGGER_CDN = "https://cdn.jsdelivr.net"
DOCS_PATH = "/docs"

HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?)(?::(\d{1,5}))?$")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header or an allowed-host entry (``name``, ``name:port``, ``[v6]:port``);
    None when it is not one. Names are compared in lower case, without a trailing dot."""
    m = _HOST.match(value.strip().lower().replace(".:", ":").rstrip("."))
    if not m:
        return None
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        return None
    return m.group(1), port


class AllowedHosts:
    """Host names (any port) or ``name:port`` pairs the server answers to."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self.entries: list[tuple[str, int | None]] = []
        for host in hosts:
            parsed = parse_host(str(host))
            if parsed is None:
                raise ValueError(f"allowed host {host!r} is not a host name, an IP address or name:port")
            self.entries.append(parsed)
        if not self.entries:
            raise ValueError("no allowed host: the server would refuse every request")

    def allows(self, host: tuple[str, int | None]) -> bool:
        name, port = host
        return any(name == n and (p is None or port == p) for n, p in self.entries)

    def __str__(self) -> str:
        return ", ".join(n if p is None else f"{n}:{p}" for n, p in self.entries)


class Guard:
    """ASGI middleware: the Host and Origin checks, then the security headers on every answer."""

    def __init__(self, inner, allowed_hosts: AllowedHosts, docs_policy: str | None = None) -> None:
        self.inner = inner
        self.allowed = allowed_hosts
        self.docs_policy = docs_policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        policy = self.docs_policy if (self.docs_policy and scope["path"] == DOCS_PATH) else CSP
        extra = (*HEADERS, (b"content-security-policy", policy.encode()))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *(h for h in extra if h[0] not in names)],
                }
            await send(message)

        headers = _headers(scope)
        status, reason = self.check(scope, headers)
        if status:
            return await send_json(with_headers, status, reason)
        await self.inner(scope, receive, with_headers)

    def check(self, scope, headers: dict[str, str]) -> tuple[int, str]:
        """(0, "") when the request may go on, else (status, reason)."""
        raw_host = headers.get("host")
        if raw_host is None:
            return 400, "the request has no Host header"
        host = parse_host(raw_host)
        if host is None or not self.allowed.allows(host):
            return 400, (
                f"Host {raw_host[:100]!r} is not a host this server serves (allowed: {self.allowed}); "
                "start it with --allowed-host NAME to serve another name"
            )
        if scope["method"] not in STATE_CHANGING:
            return 0, ""
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, scope.get("scheme", "http"), host):
            return 403, (
                f"cross-origin request refused: Origin {origin[:100]!r} is not this server's own "
                f"({scope.get('scheme', 'http')}://{raw_host[:100]})"
            )
        site = headers.get("sec-fetch-site")
        if origin is None and site is not None and site not in ("same-origin", "none"):
            return 403, f"cross-origin request refused (Sec-Fetch-Site: {site[:30]})"
        return 0, ""


def same_origin(origin: str, scheme: str, host: tuple[str, int | None]) -> bool:
    """Whether an Origin header names ``scheme://host`` (default ports filled in on both sides)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or not parts.netloc:
        return False
    theirs = parse_host(parts.netloc)
    if theirs is None:
        return False
    name, port = host
    their_name, their_port = theirs
    return (
        parts.scheme == scheme
        and their_name == name
        and (their_port or DEFAULT_PORTS[parts.scheme]) == (port or DEFAULT_PORTS.get(scheme, 80))
    )


def _headers(scope) -> dict[str, str]:
    """Request headers by lower-case name (the first of repeated ones), decoded as Latin-1."""
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def script_hashes(html: str) -> list[str]:
    """CSP source expressions (``'sha256-...'``) of the inline scripts of a page."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts]


def docs_csp(html: str) -> str:
    """The policy of the OpenAPI page: Swagger UI from its CDN and the page's own inline script."""
    return (
        f"default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
        f"script-src 'self' {SWAGGER_CDN} {' '.join(script_hashes(html))}; style-src 'self' {SWAGGER_CDN}; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def header_values() -> dict[str, str]:
    """The headers :class:`Guard` adds, for an answer sent outside it (the 500 handler)."""
    return {k.decode(): v.decode() for k, v in HEADERS} | {"content-security-policy": CSP}


def install_guard(app: FastAPI, allowed_hosts: Iterable[str], docs_html: str | None = None) -> None:
    """Add :class:`Guard` as the outermost of the app's middleware (call it after the others)."""
    app.add_middleware(
        Guard,
        allowed_hosts=AllowedHosts(allowed_hosts),
        docs_policy=docs_csp(docs_html) if docs_html else None,
    )
