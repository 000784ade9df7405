"""The errors the server answers with: werkzeug HTTPExceptions (they carry their status), rendered as JSON.

Code raises these where it detects the problem; app.py's single error handler turns any of them into

    {"error": "<reason phrase>", "message": "<what is wrong, what is accepted>", ["row": N, "feature": F]}

and anything else into a logged 500 whose body never shows the traceback. HandlerError carries any status
a user's handler chose (handlers.py); TooLarge is the 413 of a request limit (limits.py).
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.exceptions import BadRequest, HTTPException, NotAcceptable, UnsupportedMediaType
from werkzeug.http import HTTP_STATUS_CODES

from model.errors import DataError

_ROW_LABEL = re.compile(r"row (\d+)$")


class InvalidInput(BadRequest):
    """400: the body cannot be turned into rows of features; names the row (1-based) and feature if known."""

    def __init__(self, message: str, *, row: int | None = None, feature: str | None = None,
                 located: bool = False) -> None:
        where = ", ".join(part for part in (f"row {row}" if row is not None else "",
                                            f"column {feature!r}" if feature is not None else "") if part)
        super().__init__(f"{where}: {message}" if where and not located else message)
        self.row = row
        self.feature = feature

    @classmethod
    def from_data_error(cls, error: DataError) -> InvalidInput:
        """The model's error, whose message already says "row N, column 'X': ..." (as messages here do)."""
        match = _ROW_LABEL.match(error.row or "")
        return cls(str(error), row=int(match.group(1)) if match else None, feature=error.column, located=True)


class TooLarge(HTTPException):
    """413: the request exceeds a request limit other than the payload size (rows, line length).

    Not a RequestEntityTooLarge, whose message app.py replaces with the payload limit's."""

    code = 413


def unsupported_content_type(given: str, supported: list[str], note: str = "") -> UnsupportedMediaType:
    shown = f"Content-Type {given!r} is not supported" if given else "the request has no Content-Type"
    return UnsupportedMediaType(f"{shown}; send one of: {', '.join(supported)}{note}")


def not_acceptable(given: str, supported: list[str]) -> NotAcceptable:
    return NotAcceptable(f"Accept {given!r} matches no response type; accept one of: {', '.join(supported)}")


def error_body(error: HTTPException) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error.name, "message": error.description}
    if isinstance(error, InvalidInput):
        if error.row is not None:
            body["row"] = error.row
        if error.feature is not None:
            body["feature"] = error.feature
    return body


class HandlerError(HTTPException):
    """A status a user's handler chose, by raising sagemaker_inference.errors.BaseInferenceToolkitError."""

    def __init__(self, code: int, message: str, phrase: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.phrase = phrase

    @property
    def name(self) -> str:
        return HTTP_STATUS_CODES.get(self.code or 500) or self.phrase or "Error"
