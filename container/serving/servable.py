"""The seam between the /invocations route and what a worker serves: one Servable per worker.

    servable.check(request)                 # headers only, before the body is read: 415/406 early
    with servable.lock:                     # one prediction at a time per worker
        answer = servable.invoke(body, request)
    # the route answers answer.body with answer.status and answer.content_type, and puts
    # model_version=<servable.version> in X-Amzn-SageMaker-Custom-Attributes

Two implementations: predictor.Predictor (the built-in regressor, its formats in codecs.py) and
handlers.UserHandlers (the user's inference.py through sagemaker-inference's Transformer). Both raise
werkzeug HTTPExceptions for what the client must fix; anything else is a bug, which the route logs and
answers with a 500 that never shows the traceback. No Flask here: app.py builds the RequestInfo.
Loading raises LoadError with a one-line message (predictor.ModelLoader logs it and stops the server).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from werkzeug.datastructures import MIMEAccept


@dataclass(frozen=True)
class RequestInfo:
    """What an implementation may know about the request besides its body."""

    mimetype: str                        # the bare, lowercase media type, e.g. "text/csv"; "" if none
    content_type: str = ""               # the Content-Type header as sent, parameters included
    params: Mapping[str, str] = field(default_factory=dict)   # its parameters (charset, header, ...)
    accept: MIMEAccept = field(default_factory=MIMEAccept)     # parsed Accept (q-values)
    headers: Mapping[str, str] = field(default_factory=dict)  # every request header
    attributes: Mapping[str, str] = field(default_factory=dict)   # parsed X-Amzn-SageMaker-Custom-Attributes


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str                    # the full Content-Type of the response
    status: int = 200
    rows: int | None = None              # for the access log, when the implementation knows it


class LoadError(Exception):
    """What a Servable raises when it cannot load (the user's module fails to import, its model_fn raises);
    the message is the one line after `cannot serve: `, the cause carries the traceback."""


class Servable(Protocol):
    @property
    def version(self) -> str:
        """What responses report as model_version (the artifact's hash, or user:<module>)."""

    @property
    def lock(self) -> threading.Lock:
        """Held by the route around invoke: one prediction at a time per worker."""

    def check(self, request: RequestInfo) -> None:
        """Raises 415/406 for what the headers alone rule out, before the body is read."""

    def invoke(self, body: bytes, request: RequestInfo) -> Answer:
        """The response to one request; raises werkzeug HTTPExceptions for the client's mistakes."""

    def warm_up(self) -> None:
        """Called once after loading, before the worker reports ready."""
