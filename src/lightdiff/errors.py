"""One error vocabulary for the CLI, the library and the HTTP API.

Every error says what was asked, the values, why it cannot work and the fix (``hint``).
``code`` is stable: clients and tests match on it, never on the message.
"""

from __future__ import annotations


class LightdiffError(Exception):
    """Base error: a stable ``code``, a human ``message`` and a ``hint`` that says what to do."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, hint: str = "", *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code
        self.details = details or {}

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class InvalidRequest(LightdiffError):
    """A request field has a value that cannot work. ``field`` names it."""

    code = "invalid_request"
    http_status = 422

    def __init__(self, field: str, message: str, hint: str = "", **kw):
        super().__init__(message, hint, **kw)
        self.field = field
        self.details.setdefault("field", field)


class UnknownModel(LightdiffError):
    code = "unknown_model"
    http_status = 404


class WeightsNotFound(LightdiffError):
    code = "weights_not_found"
    http_status = 404


class UnsafeWeightsFormat(LightdiffError):
    code = "unsafe_weights_format"
    http_status = 400


class DoesNotFit(LightdiffError):
    """No memory plan fits the budget: the message says what is needed and what to change."""

    code = "does_not_fit"
    http_status = 507


class OutOfMemory(LightdiffError):
    code = "out_of_memory"
    http_status = 507


class BadOutput(LightdiffError):
    """The pipeline produced NaN or all-black images even after its retry."""

    code = "bad_output"
    http_status = 500
