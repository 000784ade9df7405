"""UserHandlers: the user's inference handlers (sagemaker-inference's contract) as a servable.Servable.

The module user_code.py located defines model_fn and either transform_fn or any of input_fn, predict_fn
and output_fn (optionally pre_model_fn and model_warmup_fn). sagemaker-inference's Transformer imports
it, calls them, and fills in what is missing from SafeInferenceHandler:

    handlers = UserHandlers.load(settings, gpu_id)   # worker, after fork: import the module, pre_model_fn,
                                                     # model_fn(model_dir), model_warmup_fn
    handlers.invoke(body, request)                   # -> Answer; the route holds handlers.lock

A handler may take one more argument, `context` (the toolkit counts the parameters). It receives the
context given at load time, which here is the worker's one HandlerContext: `system_properties`
{"model_dir", "gpu_id"} always, and while a request runs that request's headers
(`get_request_header(0, name)`, `request_processor[0].get_request_properties()`), since a worker runs one
request at a time. `set_response_status(code)` in a handler sets the status of a successful response.

What this adds to the toolkit, and why:
  * Content-Type: the toolkit matches it exactly, so handlers see the bare lowercase media type
    ("application/json; charset=utf-8" -> "application/json"); a body in another charset is transcoded to
    UTF-8 first (the toolkit decodes JSON and CSV as UTF-8); invalid UTF-8 is a 400, not a 500.
  * Accept: missing or */* means SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, as in the toolkit; a list with
    q-values is resolved to its best concrete type with werkzeug's parser (the toolkit would hand the raw
    header to output_fn). Without a user output_fn or transform_fn the toolkit's encoder writes the
    response, so its types (JSON, CSV, NPY) are negotiated, and 406 lists them when none fits.
  * Errors: a BaseInferenceToolkitError answers its own status_code and message, a werkzeug
    HTTPException passes through, anything else is a JSON 500 naming the exception type and message; the
    traceback goes to the log only (the toolkit sends it to the client). The worker keeps serving.
  * Defaults: SafeInferenceHandler never unpickles, and answers 415/400 instead of a 500 for a type it
    cannot read or a body it cannot parse; its predict_fn runs torch.nn.Module models. The toolkit's
    decoder table, which a user's input_fn may call, reads x-npy without pickles too.
"""

from __future__ import annotations

import codecs
import importlib
import io
import logging
import os
import pathlib
import sys
import threading
import weakref
import zipfile
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
from sagemaker_inference import content_types, decoder
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.errors import BaseInferenceToolkitError
from sagemaker_inference.transformer import Transformer
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException, InternalServerError

from container.serving.errors import HandlerError, InvalidInput, not_acceptable, unsupported_content_type
from container.serving.servable import Answer, LoadError, RequestInfo
from container.serving.settings import ServingSettings
from container.serving.user_code import UserCode

INPUT_TYPES = (content_types.JSON, content_types.CSV, content_types.NPY, content_types.NPZ)
ENCODER_TYPES = (content_types.JSON, content_types.CSV, content_types.NPY)   # the toolkit's encoder.py
_BAD_BODY = (ValueError, TypeError, EOFError, OSError, KeyError, zipfile.BadZipFile, RecursionError)

log = logging.getLogger("hyperplane.serve")


class UserHandlers:
    """The user's handlers in one worker; invoke runs one request at a time (the route holds `lock`)."""

    def __init__(self, code: UserCode, model_dir: pathlib.Path, default_accept: str, gpu_id: int | None) -> None:
        self.code = code
        self.model_dir = model_dir
        self.default_accept = default_accept
        self.version = f"user:{code.module}"
        self.lock = threading.Lock()
        self.context = HandlerContext(model_dir, gpu_id)
        self.transformer = _Transformer(SafeInferenceHandler())

    @classmethod
    def load(cls, settings: ServingSettings, gpu_id: int | None) -> UserHandlers:
        if settings.user_code is None:
            raise ValueError("handler mode needs settings.user_code")
        handlers = cls(settings.user_code, settings.model_dir, settings.default_accept, gpu_id)
        handlers._initialize()
        return handlers

    def _initialize(self) -> None:
        folder = str(self.code.folder)
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)                        # the user's module and its siblings come first
        os.environ["SAGEMAKER_PROGRAM"] = self.code.module   # what the toolkit's Environment imports
        # A fresh worker has imported no module of this name; a process that loads several handler
        # modules (tests) must not get the previous one back from the cache.
        parts = self.code.module.split(".")
        for depth in range(1, len(parts) + 1):
            sys.modules.pop(".".join(parts[:depth]), None)
        importlib.invalidate_caches()                     # the folder may be newer than the finders' caches
        _close_the_pickle_door()
        self.transformer.running = None
        try:
            self.transformer.validate_and_initialize(model_dir=str(self.model_dir), context=self.context)
        except BaseException as error:   # sys.exit() in model_fn too: this thread must report, not vanish
            raise LoadError(self._load_failure(error)) from error

    def _load_failure(self, error: BaseException) -> str:
        running = self.transformer.running
        if running is not None:
            stage = running.removeprefix("default_")      # the toolkit's default model_fn is "model_fn" too
        elif self.code.module in sys.modules:
            stage = f"checking the handlers of {self.code.module}"
        else:
            stage = f"importing {self.code.module} from {self.code.folder}"
        return f"{stage} raised {describe(error)}"

    def warm_up(self) -> None:
        """Nothing to do: the user's model_warmup_fn, if any, ran at load (there is no input to invent)."""

    def check(self, request: RequestInfo) -> None:
        self._accept(request)
        _charset(request)

    def invoke(self, body: bytes, request: RequestInfo) -> Answer:
        accept = self._accept(request)
        headers = {name: value for name, value in request.headers.items()
                   if name.lower() not in ("content-type", "accept")}
        if request.mimetype:
            headers["Content-Type"] = request.mimetype    # the toolkit compares it with ==
        headers["Accept"] = accept
        self.context.begin(headers)
        results = self.transformer.transform([{"body": _utf8(body, request)}], self.context)
        content_type = self.context.response_content_type
        content_type = accept if not isinstance(content_type, str) or not content_type else content_type
        return Answer(self._payload(results[0]), " ".join(content_type.split()),
                      status=self.context.response_status or 200)

    def _accept(self, request: RequestInfo) -> str:
        offered = ENCODER_TYPES if self.transformer.writes_with_encoder else None
        return resolve_accept(request.accept, self.default_accept, offered)

    def _payload(self, result: Any) -> bytes:
        if isinstance(result, str):
            return result.encode("utf-8")
        if isinstance(result, bytes | bytearray | memoryview):
            return bytes(result)
        message = (f"TypeError: the handlers returned {type(result).__name__}; output_fn or transform_fn "
                   "must return bytes or str, or (body, content_type)")
        log.error("%s (module %s)", message, self.code.module)
        raise InternalServerError(message)


def resolve_accept(accept: MIMEAccept, default: str, offered: Sequence[str] | None) -> str:
    """The one media type output_fn is given. No Accept, or */*: `default`. `offered` None (the user
    writes the response): the best concrete type the client names, else `default` when a wildcard covers
    it, else the client's wildcard as sent. `offered` given: the best of those, `default` first; 406."""
    entries = [(value.split(";")[0].strip().lower(), quality) for value, quality in accept]
    if not entries:
        return default if offered is None or default in offered else offered[0]
    parsed = MIMEAccept(entries)
    if offered is None:
        by_quality = sorted(entries, key=lambda entry: -entry[1])   # stable: werkzeug's specificity order
        concrete = [value for value, _ in by_quality if "*" not in value]
        wanted = [value for value, quality in by_quality if quality > 0]
        return parsed.best_match([*concrete, default]) or (wanted[0] if wanted else default)
    candidates = [default, *(t for t in offered if t != default)] if default in offered else list(offered)
    best = parsed.best_match(candidates)
    if best is None:
        raise not_acceptable(", ".join(value for value, _ in accept), list(offered))
    return best


def describe(error: BaseException) -> str:
    """`Type: message` on one line, as error responses and the start-up failure line show it."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _charset(request: RequestInfo) -> str | None:
    """The codec named by the Content-Type's charset parameter, None without one; 415 if unknown."""
    given = request.params.get("charset")
    if given is None:
        return None
    try:
        return codecs.lookup(given.strip().strip('"')).name
    except LookupError:
        raise unsupported_content_type(request.content_type, ["a known charset such as utf-8"]) from None


def _utf8(body: bytes, request: RequestInfo) -> bytes:
    """The body as the toolkit expects text: UTF-8. A charset parameter means the body is text in it."""
    charset = _charset(request) or "utf-8"
    if charset == "utf-8" and request.mimetype not in content_types.UTF8_TYPES:
        return body                                       # bytes the handler reads as it likes
    try:
        text = body.decode("utf-8-sig" if charset == "utf-8" else charset)
    except UnicodeDecodeError as error:
        raise InvalidInput(f"the body is not valid {charset} text (byte {error.start})") from None
    return text.encode("utf-8")


def http_error(error: BaseException | None, running: str | None) -> HTTPException:
    """The response for an exception a handler raised during a request."""
    if isinstance(error, HTTPException):
        return error                                      # our defaults' 400/406/415, or the user's own
    if isinstance(error, BaseInferenceToolkitError):
        try:
            code = int(error.status_code)
        except (TypeError, ValueError):
            code = 500
        if not 400 <= code <= 599:
            log.warning("%s raised %s with status_code %r, which is not an error status: answering 500",
                        running, type(error).__name__, error.status_code)
            code = 500
        return HandlerError(code, str(error.message), str(error.phrase or ""))
    log.error("%s raised on a request; answering 500", running or "a user handler", exc_info=error)
    return InternalServerError(describe(error) if error is not None else "the handlers failed")


class _Transformer(Transformer):  # type: ignore[misc]   # the toolkit is untyped
    """The toolkit's Transformer, raising errors for app.py instead of answering with the traceback."""

    def __init__(self, handler: SafeInferenceHandler) -> None:
        super().__init__(default_inference_handler=handler)
        self.running: str | None = None                   # the handler function that runs, for messages

    def handle_error(self, context: Any, inference_exception: Any, trace: str) -> NoReturn:
        # Called inside transform()'s `except` block, so sys.exc_info() is the original exception (the
        # toolkit's argument wraps anything else in a GenericInferenceToolkitError 500).
        raise http_error(sys.exc_info()[1], self.running)

    def _run_handler_function(self, func: Any, *argv: Any) -> Any:
        self.running = getattr(func, "__name__", "a handler")
        return super()._run_handler_function(func, *argv)

    @property
    def writes_with_encoder(self) -> bool:
        """True when neither transform_fn nor output_fn is the user's: the toolkit's encoder answers."""
        return bool(self._transform_fn == self._default_transform_fn
                    and self._output_fn == self._default_inference_handler.default_output_fn)


class SafeInferenceHandler(DefaultInferenceHandler):  # type: ignore[misc]
    """The defaults for functions the user's module leaves out. model_fn stays the toolkit's (it raises
    NotImplementedError: a module without model_fn fails at start), output_fn too (the toolkit's encoder,
    given a type resolve_accept chose among ENCODER_TYPES)."""

    def __init__(self) -> None:
        self._in_eval_mode: weakref.WeakSet[Any] = weakref.WeakSet()

    def default_input_fn(self, input_data: Any, content_type: str | None, context: Any = None) -> Any:
        """JSON and CSV through the toolkit's decoder, x-npz (scipy.sparse, no pickles) too; x-npy read here
        without pickles. 415 for other types, 400 for an empty or unreadable body."""
        if content_type not in INPUT_TYPES:
            raise unsupported_content_type(content_type or "", list(INPUT_TYPES),
                                           "; or define input_fn in the inference module to read it")
        if not input_data or not input_data.strip():
            raise InvalidInput("the request body is empty")
        try:
            if content_type == content_types.NPY:
                return _load_npy(input_data)
            return decoder.decode(input_data, content_type)
        except InvalidInput:
            raise
        except _BAD_BODY as error:
            raise InvalidInput(f"the body is not readable as {content_type}: {describe(error)}") from None

    def default_predict_fn(self, data: Any, model: Any, context: Any = None) -> Any:
        """A torch.nn.Module gets the input as a float32 tensor on its device, in eval mode (set once),
        without gradients, and the output comes back as a numpy array (as AWS's PyTorch container does);
        an input the module cannot take (its shape) is a 400.
        Anything else keeps the toolkit's NotImplementedError: define predict_fn."""
        torch = sys.modules.get("torch")                  # a Module exists only if torch was imported
        if torch is None or not isinstance(model, torch.nn.Module):
            return super().default_predict_fn(data, model)
        device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        if model not in self._in_eval_mode:
            model.eval()
            self._in_eval_mode.add(model)
        try:
            tensor = torch.as_tensor(data, dtype=torch.float32, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidInput(f"the input is not an array of numbers: {describe(error)}") from None
        with torch.no_grad():
            try:
                output = model(tensor)
            except torch.cuda.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError, IndexError) as error:
                # The client's array goes to the model as it came: a shape or size the model cannot take
                # is the client's to fix (a 400), not a server error.
                raise InvalidInput(f"an input of shape {tuple(tensor.shape)} does not fit the model: "
                                   f"{describe(error)}") from None
        return output.cpu().numpy() if isinstance(output, torch.Tensor) else output


def _close_the_pickle_door() -> None:
    """The toolkit's decoder table reads x-npy with np.load(allow_pickle=True): a user's input_fn calling
    decoder.decode(body, "application/x-npy") would run whatever a request body pickles. This process's
    table gets the reader without pickles instead (the toolkit's one mutable seam for it)."""
    decoder._decoder_map[content_types.NPY] = _load_npy


def _load_npy(body: bytes) -> np.ndarray:
    # The toolkit's decoder uses np.load(allow_pickle=True), which runs any code a pickle names.
    try:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:   # a 400 even from a user's input_fn
        raise InvalidInput(f"the body is not a readable .npy array without pickles: {error}") from None
    except MemoryError:   # np.load allocates the shape the header declares before it reads the data
        raise InvalidInput("the .npy header declares an array far larger than the body") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise InvalidInput("the body is an .npz archive; send one .npy array (or application/x-npz for a "
                           "scipy.sparse matrix)")
    return loaded


class HandlerContext:
    """The part of Multi Model Server's context that the toolkit and handlers use; one per worker."""

    def __init__(self, model_dir: pathlib.Path, gpu_id: int | None) -> None:
        self.system_properties: dict[str, Any] = {"model_dir": str(model_dir), "gpu_id": gpu_id}
        self.request_processor = [RequestProcessor({})]
        self.response_content_type: str | None = None
        self.response_status: int | None = None

    def begin(self, headers: dict[str, str]) -> None:
        """A new request: its headers, no response settings yet."""
        self.request_processor = [RequestProcessor(headers)]
        self.response_content_type = None
        self.response_status = None

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return dict(self.request_processor[idx].get_request_properties())

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_content_type = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.response_content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """The status of this request's response (the phrase is werkzeug's for the code)."""
        self.response_status = int(code)


class RequestProcessor:
    """One request's headers, as MMS's RequestProcessor offers them."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers

    def get_request_property(self, key: str) -> str | None:
        return next((value for name, value in self._headers.items() if name.lower() == key.lower()), None)
