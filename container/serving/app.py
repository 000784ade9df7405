"""The HTTP layer: `create_app(settings, source)` builds the Flask app one gunicorn worker serves.

    GET  /ping                   200 (empty) once every worker has loaded the model and warmed up, and
                                 from then on while one has (a dead worker's replacement loads meanwhile;
                                 readiness.py), else 503; it lists the readiness folder, on threads of
                                 its own (worker.py)
    POST /invocations            the worker's Servable (servable.py): check the headers, read the body
                                 (413 beyond the payload limit, or for CSV and JSON Lines beyond the row
                                 or line limits of limits.py), invoke under the worker's lock, answer
    GET  /execution-parameters   {"MaxConcurrentTransforms": n, "BatchStrategy": "MULTI_RECORD",
                                  "MaxPayloadInMB": m}

Routes stay thin: what is served (the built-in Predictor with codecs.py's formats, or the user's handlers
in handlers.py) sits behind the Servable interface, so both get the same limits, log line, custom
attributes, readiness and error rendering. Every error, expected (werkzeug
HTTPException: 400/406/413/415/503) or not (a bug: logged with its traceback, answered 500 without it),
is rendered by one handler as JSON. The parsed custom attributes reach the servable in
RequestInfo.attributes (the built-in model reads `intervals=<level>` there: options.py). One log line per
request (`hyperplane.access`, key=value, never the payload); /ping lines only with HYPERPLANE_LOG_PING=true.

The plain prediction request (POST /invocations, CSV or JSON, no parameters or attributes) skips Flask:
fastpath.FastPath answers it in WSGI with the same Predictor, headers and log line, and hands everything
else, failures included, to the routes here, which answer exactly as before.

In-process use (tests): `create_app(settings, LoadedPredictor(Predictor(regressor))).test_client()`, or
any other Servable in place of the Predictor.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge, ServiceUnavailable

from container.serving.attributes import HEADER, parse_custom_attributes, response_attributes
from container.serving.errors import error_body
from container.serving.fastpath import FastPath
from container.serving.limits import RequestLimits
from container.serving.logbuffer import info_later
from container.serving.servable import RequestInfo, Servable
from container.serving.settings import ServingSettings

log = logging.getLogger("hyperplane.serve")
access_log = logging.getLogger("hyperplane.access")
DRAIN_BYTES = 64 * 1024 * 1024   # the most of a refused body read to keep its connection (_discard_body)


class PredictorSource(Protocol):
    def current(self) -> Servable | None:
        """The worker's servable, or None while it is loading."""

    def ready(self) -> bool:
        """What /ping reports: this worker and all its siblings can predict."""


class LoadedPredictor:
    """A source whose servable is already loaded (tests, single-process use)."""

    def __init__(self, predictor: Servable) -> None:
        self.predictor = predictor

    def current(self) -> Servable | None:
        return self.predictor

    def ready(self) -> bool:
        return True


def create_app(settings: ServingSettings, source: PredictorSource) -> Flask:
    app = Flask("hyperplane")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    limits = RequestLimits.from_settings(settings)
    fast = FastPath(app.wsgi_app, settings, limits, access_log)
    app.wsgi_app = fast  # type: ignore[method-assign]

    @app.get("/ping")
    def ping() -> Response:
        if source.ready():
            return Response(status=200)
        raise ServiceUnavailable("the model is loading")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return jsonify({"MaxConcurrentTransforms": settings.max_concurrent_transforms,
                        "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": settings.max_payload_mb})

    @app.post("/invocations")
    def invocations() -> Response:
        g.custom_attributes = parse_custom_attributes(request.headers.get(HEADER))
        servable = source.current()
        if servable is None:
            raise ServiceUnavailable("the model is loading; retry when /ping answers 200")
        fast.learn(servable)   # from now on the plain requests take the fast path
        info = RequestInfo(request.mimetype, request.content_type or "", dict(request.mimetype_params),
                           request.accept_mimetypes, dict(request.headers.items()), g.custom_attributes)
        servable.check(info)   # 415/406 before the body is read
        body = _read_body(settings.max_payload_bytes)
        limits.check_lines(body, request.mimetype)   # before the lock: a refused body costs no turn
        with servable.lock:
            answer = servable.invoke(body, info)
        if answer.rows is not None:
            g.rows = answer.rows
        response = Response(answer.body, status=answer.status, content_type=answer.content_type)
        response.headers[HEADER] = response_attributes(servable.version)
        return response

    @app.errorhandler(Exception)
    def render_error(error: Exception) -> Response:
        _discard_body()
        if not isinstance(error, HTTPException):
            log.error("unexpected error on %s %s", request.method, request.path, exc_info=error)
            error = InternalServerError("unexpected server error; the server log has the details")
        if isinstance(error, RequestEntityTooLarge):
            error.description = (f"the request body is larger than {settings.max_payload_mb} MiB "
                                 "(SAGEMAKER_MAX_PAYLOAD_IN_MB); split it into smaller requests")
        response = jsonify(error_body(error))
        response.status_code = error.code or 500
        for name, value in error.get_headers():   # e.g. Allow on 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        if request.path != "/ping" or settings.log_ping:
            latency_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            info_later(access_log, "method=%s path=%s status=%d rows=%s latency_ms=%.1f content_type=%s "
                       "accept=%s response_type=%s bytes_in=%s",
                       request.method, request.path, response.status_code,
                       g.get("rows", "-"), latency_ms, request.mimetype or "-",
                       _quoted(request.headers.get("Accept", "-")), response.mimetype or "-",
                       request.content_length if request.content_length is not None else "-")
        return response

    return app


def _read_body(limit: int | None) -> bytes:
    """The whole body, or 413 beyond `limit`. With a Content-Length werkzeug checks it before reading; a
    chunked body is read to one byte past the limit here, because werkzeug's limited stream would stop
    quietly at the limit and hand back a truncated body."""
    if request.content_length is not None or limit is None:
        return request.get_data(cache=False)
    body = request.input_stream.read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _discard_body() -> None:
    """Reads and drops what is left of the body of a request refused before it was read (413 for its size,
    415 or 406 for its headers, 503 while loading), up to DRAIN_BYTES; nothing is left after a body the
    route has read. Without this, gunicorn drains at most 64 KiB after the response and otherwise closes
    the connection, yet the response does not say `Connection: close` (gunicorn strips that header from
    an application's response), so a keep-alive client (SageMaker's front end is one) sends its next
    request on a connection about to close, and that request fails without an answer."""
    stream = request.environ.get("wsgi.input")
    remaining = DRAIN_BYTES
    try:
        while stream is not None and remaining > 0:
            chunk = stream.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
    except Exception:   # the client broke off (gunicorn raises its own parse errors too): nothing to keep
        log.debug("could not drain the request body", exc_info=True)


def _quoted(value: str) -> str:
    return f'"{value}"' if " " in value or "," in value else value
