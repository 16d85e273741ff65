"""Request checks that run before any route: Host, API token, Origin, body size.

Written as one small ASGI middleware because each refusal must answer in the error shape of the API
it was aimed at (errors.error_response picks it by path), which Starlette's TrustedHost and body
limit middlewares (plain-text answers) do not do.

- Host: bound to loopback without a token, only loopback host names are served, so a web page
  that re-points its own DNS name at 127.0.0.1 (DNS rebinding) cannot drive the server.
- Token: when set (always when bound beyond loopback), every API request carries it as
  ``Authorization: Bearer T`` or ``X-API-Key: T``. The web UI's static files and the API docs are
  public (they hold no data); the UI sends the token with its API calls.
- Origin: a state-changing request (POST, PUT, PATCH, DELETE) from a page of another origin is
  refused, so a site the operator visits cannot submit or cancel jobs through their browser.
- Body size: Content-Length over the limit is refused at once; a chunked body is counted as read.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from lightdiff.server.config import ServerConfig, is_loopback
from lightdiff.server.errors import error_response

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = {"/", "/index.html", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:7860
        return host_header[1:host_header.find("]")].lower() if "]" in host_header else host_header.lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 else host_header.lower()


class SecurityMiddleware:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.config = config
        self.token = config.token.encode() if config.token else None
        self.hosts = LOOPBACK_NAMES | {config.host.lower()} | {h.lower() for h in config.allowed_hosts}
        self.origins = {o.rstrip("/").lower() for o in config.allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = Headers(scope=scope)
        refusal = (self._check_host(headers) or self._check_token(path, method, headers)
                   or self._check_origin(method, headers) or self._check_length(headers))
        if refusal:
            status, code, message, hint = refusal
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return await error_response(path, status, code, message, hint, headers=extra)(scope, receive, send)
        await self.app(scope, self._counting(receive), send)

    def _check_host(self, headers: Headers):
        if self.token or not self.config.loopback:
            return None
        name = host_name(headers.get("host", ""))
        if name in self.hosts or (name and is_loopback(name)):
            return None
        return (403, "forbidden_host", f"Host {name[:100]!r} is not a name of this server, which listens on loopback.",
                "Open the server as http://127.0.0.1:PORT/, or start it with --allow-host NAME.")

    def _check_token(self, path: str, method: str, headers: Headers):
        if self.token is None or (method in SAFE_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))):
            return None
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given.encode(), self.token):
            return None
        what = "was missing" if given is None else "did not match"
        return (401, "unauthorized", f"This server needs its API token; the token {what}.",
                "Send Authorization: Bearer TOKEN or X-API-Key: TOKEN (the token `lightdiff serve` printed).")

    def _check_origin(self, method: str, headers: Headers):
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site") == "cross-site":
                return (403, "forbidden_origin", "A cross-site request may not change state here.",
                        "Call the API from the server's own page or from a program, not from another site.")
            return None  # programs (curl, SDKs) send no Origin
        if origin.rstrip("/").lower() in self.origins:
            return None
        own = headers.get("host", "").lower()
        if origin != "null" and urlsplit(origin).netloc.lower() == own and own:
            return None
        return (403, "forbidden_origin", f"Origin {origin[:100]!r} is not this server's, and it may not change state here.",
                "Use the server's own web UI, call it from a program, or start it with --allow-origin ORIGIN.")

    def _check_length(self, headers: Headers):
        length = headers.get("content-length")
        if length is None:
            return None
        if not length.isdigit():
            return (400, "bad_request", f"Content-Length {length[:40]!r} is not a number.", "Send a valid Content-Length.")
        if int(length) > self.config.max_body_bytes:
            return (413, "body_too_large", f"The request body is {length} bytes, over the limit of "
                    f"{self.config.max_body_bytes}.", "Send a smaller body (resize images before sending).")
        return None

    def _counting(self, receive):
        limit, seen = self.config.max_body_bytes, 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # raised inside the route's body read: the app's 413 handler answers
                    raise HTTPException(413, f"The request body is over the limit of {limit} bytes.")
            return message

        return wrapped
