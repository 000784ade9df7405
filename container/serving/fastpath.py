"""FastPath: the plain prediction request answered in WSGI directly, everything else handed to Flask.

    app.wsgi_app = FastPath(app.wsgi_app, settings, limits, access_log)   # app.py, create_app
    fast.learn(servable)                                                   # the route, once it has one

Flask's dispatch (request and app contexts, routing, the before/after hooks, werkzeug's Request and
Response, Accept parsing) cost ~200 us of the ~320 us a one-row CSV prediction took in process, more than
the model. The request SageMaker's endpoint mostly sees is plain: POST /invocations with a Content-Length,
Content-Type exactly text/csv, application/json or application/jsonlines, an Accept that is absent, */*
or one of those, and no custom attributes. For that one this answers with the built-in Predictor itself:
same limits, same lock, same `Predictor.answer`, same headers and access log line.

It only ever answers successes. Anything else (another route or method, parameters, attributes, a
chunked body, user handlers, a model still loading) goes to Flask untouched, and so does any request the
fast path started that raises, with its body put back: Flask then does everything again and answers
exactly what it always has, errors included (tests/serving/test_fastpath.py compares the two). The body
of a refused request is read twice; that costs nothing worth keeping an answer apart for.

Every POST of RELEASE_BYTES or more (or of unknown length), on either path, is answered through
memory.ReleasingBody, which hands the request's freed memory back to the system once the response is sent.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from container.serving import codecs
from container.serving.attributes import response_attributes
from container.serving.limits import RequestLimits
from container.serving.logbuffer import BufferedStreamHandler, buffered_handler_of
from container.serving.memory import RELEASE_BYTES, ReleasingBody
from container.serving.predictor import Predictor
from container.serving.servable import Servable
from container.serving.settings import ServingSettings

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REQUEST_TYPES = frozenset((codecs.CSV, codecs.JSON, codecs.JSONLINES))
_ANY = frozenset(("", "*/*"))   # Accept values that mean "the request's own type" (codecs.response_type)
_ATTRIBUTES = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
_ACCESS_LINE = ("method=POST path=/invocations status=200 rows=%s latency_ms=%.1f content_type=%s accept=%s "
                "response_type=%s bytes_in=%s")   # app.py's line, for what this path answers


class FastPath:
    def __init__(self, app: Wsgi, settings: ServingSettings, limits: RequestLimits,
                 access_log: logging.Logger) -> None:
        self.app = app
        self.max_bytes = settings.max_payload_bytes
        self.limits = limits
        self.access_log = access_log
        self.predictor: Predictor | None = None
        self.version_header = ""
        self.access_handler: BufferedStreamHandler | None = None

    def learn(self, servable: Servable) -> None:
        """The worker's servable, as the route got it: the built-in Predictor enables the fast path."""
        if self.predictor is None and isinstance(servable, Predictor):
            self.version_header = response_attributes(servable.version)
            # where the access line goes: logging is configured before any request, and the built-in
            # Predictor runs no code that changes it
            self.access_handler = buffered_handler_of(self.access_log)
            self.predictor = servable

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self._route(environ, start_response)
        length = environ.get("CONTENT_LENGTH", "")
        if environ.get("REQUEST_METHOD") == "POST" and (not length.isdigit() or int(length) >= RELEASE_BYTES):
            return ReleasingBody(answer)   # a large (or chunked) body: its memory goes back once answered
        return answer

    def _route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        predictor = self.predictor
        if (predictor is not None and environ.get("PATH_INFO") == "/invocations"
                and environ.get("REQUEST_METHOD") == "POST" and not environ.get(_ATTRIBUTES)):
            started = time.perf_counter()
            answered = self._answer(predictor, environ, start_response, started)
            if answered is not None:
                return answered
        return self.app(environ, start_response)

    def _answer(self, predictor: Predictor, environ: dict[str, Any], start_response: Callable[..., Any],
                started: float) -> list[bytes] | None:
        mimetype = environ.get("CONTENT_TYPE", "")
        accept = environ.get("HTTP_ACCEPT", "")
        length = environ.get("CONTENT_LENGTH", "")
        if mimetype not in _REQUEST_TYPES or not length.isdigit():
            return None
        response_type = mimetype if accept in _ANY else accept if accept in _REQUEST_TYPES else None
        size = int(length)
        if response_type is None or size == 0 or (self.max_bytes is not None and size > self.max_bytes):
            return None
        stream = environ["wsgi.input"]
        body = stream.read(size)
        try:
            if len(body) != size:   # the client broke off: Flask's stream says so
                raise ValueError("short body")
            self.limits.check_lines(body, mimetype)
            with predictor.lock:
                answer = predictor.answer(body, mimetype, {}, response_type)
        except Exception:
            # Flask answers it as it always has; it reads the body from here
            environ["wsgi.input"] = io.BytesIO(body)
            return None
        start_response("200 OK", [("Content-Type", answer.content_type),
                                  ("Content-Length", str(len(answer.body))),
                                  ("X-Amzn-SageMaker-Custom-Attributes", self.version_header)])
        if self.access_log.isEnabledFor(logging.INFO):
            values = (answer.rows, (time.perf_counter() - started) * 1000, mimetype,
                      _quoted(accept if "HTTP_ACCEPT" in environ else "-"), response_type, size)
            if self.access_handler is not None:
                self.access_handler.later(self.access_log.name, _ACCESS_LINE, values)
            else:
                self.access_log.info(_ACCESS_LINE, *values)
        return [answer.body]


def _quoted(value: str) -> str:
    return f'"{value}"' if " " in value or "," in value else value
