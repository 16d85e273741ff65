"""Error responses: one shape per API family, picked by the path, for every 4xx and 5xx.

- native (/api/..., the web UI): {"error": {"code", "message", "hint"}} (+ "details" when a field is named)
- OpenAI (/v1/...): {"error": {"message", "type", "param", "code"}}
- AUTOMATIC1111 (/sdapi/...): {"error", "detail", "body", "errors"}, as A1111's own handler answers

Handlers are installed for lightdiff errors, FastAPI's request validation errors, Starlette's HTTP
errors (404, 405, 413 ...) and anything unexpected, so no response escapes in another shape.
"""

from __future__ import annotations

import sys
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lightdiff.errors import LightdiffError

HTTP_CODES = {
    400: ("bad_request", "The request could not be read.", "Check the body is valid JSON or form data."),
    401: ("unauthorized", "This server needs an API token.", "Send Authorization: Bearer TOKEN or X-API-Key: TOKEN."),
    403: ("forbidden", "The request was refused.", ""),
    404: ("not_found", "There is nothing at this path.", "See /docs for the API's paths."),
    405: ("method_not_allowed", "This path does not take this HTTP method.", "See /docs for the methods."),
    413: ("body_too_large", "The request body is too large.", "Send a smaller body (resize images)."),
    415: ("unsupported_media_type", "The request body's content type is not accepted.",
          "Send application/json (or multipart/form-data where the API says so)."),
    422: ("invalid_request", "The request has an invalid field.", "Fix the field named in the message."),
    429: ("too_many_requests", "Too many requests.", "Retry later."),
    500: ("internal_error", "The server failed unexpectedly.", "The server log has the traceback; please report it."),
    501: ("not_implemented", "This is not implemented.", ""),
    503: ("unavailable", "The server cannot take this now.", "Retry later."),
}


class ApiError(LightdiffError):
    """An error raised by a route with an explicit status and code."""

    def __init__(self, status: int, code: str, message: str, hint: str = "", field: str | None = None):
        super().__init__(message, hint, code=code, details={"field": field} if field else None)
        self.http_status = status


def family(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/sdapi/"):
        return "a1111"
    return "native"


def error_response(path: str, status: int, code: str, message: str, hint: str = "",
                   field: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = family(path)
    if kind == "openai":
        etype = ("invalid_request_error" if 400 <= status < 500 and status not in (401, 403, 404, 429)
                 else {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                       429: "rate_limit_error", 501: "not_implemented_error"}.get(status, "server_error"))
        body = {"error": {"message": f"{message} {hint}".strip(), "type": etype, "param": field, "code": code}}
    elif kind == "a1111":
        body = {"error": code, "detail": message, "body": "", "errors": hint}
    else:
        err = {"code": code, "message": message, "hint": hint}
        if field:
            err["details"] = {"field": field}
        body = {"error": err}
    return JSONResponse(body, status_code=status, headers=headers)


def from_lightdiff(path: str, e: LightdiffError) -> JSONResponse:
    status = getattr(e, "http_status", 500) or 500
    return error_response(path, status, e.code, e.message, e.hint, (e.details or {}).get("field"))


def install(app: FastAPI) -> None:
    @app.exception_handler(LightdiffError)
    async def _lightdiff(request: Request, e: LightdiffError):
        return from_lightdiff(request.url.path, e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":
            return error_response(request.url.path, 400, "invalid_json",
                                  f"The body is not valid JSON ({first.get('msg', '')}).",
                                  "Send a JSON object with Content-Type: application/json.", "body")
        value = first.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f"={str(value)[:60]!r}"
        return error_response(request.url.path, 422, "invalid_request",
                              f"{field}{shown}: {first.get('msg', 'invalid')}.",
                              f"Fix the {field!r} field (see /docs for its type).", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code, message, hint = HTTP_CODES.get(e.status_code, ("http_error", "The request failed.", ""))
        if isinstance(e.detail, str) and e.detail and e.status_code not in (404, 405, 413):
            message = e.detail
        return error_response(request.url.path, e.status_code, code, message, hint, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)
        code, message, hint = HTTP_CODES[500]
        return error_response(request.url.path, 500, code, f"{message} ({type(e).__name__})", hint)
