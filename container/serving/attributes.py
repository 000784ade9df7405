"""X-Amzn-SageMaker-Custom-Attributes: SageMaker forwards the caller's CustomAttributes string verbatim.

Read as a list of `key=value` entries separated by commas or semicolons (`a=1, b=2; flag`); a bare key
reads as an empty value, whitespace around keys and values is dropped, the last repeat of a key wins.
app.py keeps them on the request (`flask.g.custom_attributes`) and hands them to the servable in
RequestInfo.attributes; the built-in model acts on `intervals=<level>` (options.py), user handlers may read
them. Responses carry `model_version=<version>` in the same header.
"""

from __future__ import annotations

import re

from werkzeug.exceptions import BadRequest

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_LENGTH = 1024   # InvokeEndpoint's limit on CustomAttributes
_SEPARATORS = re.compile(r"[,;]")


def parse_custom_attributes(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    if len(value) > MAX_LENGTH:
        raise BadRequest(f"{HEADER} is {len(value)} characters long; at most {MAX_LENGTH} are allowed")
    attributes: dict[str, str] = {}
    for entry in _SEPARATORS.split(value):
        key, _, item = entry.partition("=")
        if key.strip():
            attributes[key.strip()] = item.strip()
    return attributes


def response_attributes(model_version: str) -> str:
    return f"model_version={model_version}"
