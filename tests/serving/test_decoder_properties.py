"""Property-based tests of every request decoder: any body under any Content-Type gets a 2xx, or a 4xx
whose body is the JSON error; never a 500 (an exception the decoders did not expect) and never a crash.

Bodies come from Hypothesis: raw bytes, JSON documents of any shape (NaN, infinity, huge numbers, deep
nesting, wrong types and names included) alone and inside each accepted envelope, CSV-like text, and
.npy arrays of any dtype. Both servables are covered: the built-in regressor's codecs (container/serving/
codecs.py) and the defaults a user's inference.py falls back on (container/serving/handlers.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model.regressor import Regressor
from tests.serving.conftest import ClientFactory
from tests.serving.requests_data import FEATURES

# The clients are built once per test and reused by every example: requests do not change them.
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CONTENT_TYPES = st.sampled_from([
    "text/csv", "text/csv; header=present", "text/csv; header=absent", "text/csv; charset=latin-1",
    "text/csv; header=maybe", "text/csv; charset=no-such-charset", "application/json",
    "application/json; charset=utf-8", "application/jsonlines", "application/x-npy", "application/x-npz",
    "application/octet-stream", "text/plain", "", "*/*", "application/json; charset=utf-16"])
ACCEPTS = st.sampled_from([None, "*/*", "text/csv", "application/json", "application/jsonlines",
                           "application/x-npy", "image/png", "text/csv;q=0.5, application/json", "garbage;;q=x"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30, max_value=10**400) |
           st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | st.sampled_from(FEATURES))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6) |
                           st.dictionaries(st.text(max_size=10) | st.sampled_from(FEATURES), inner, max_size=6),
                           max_leaves=40)


def _envelopes(value: Any) -> st.SearchStrategy[str]:
    forms = [value, {"instances": value}, {"dataframe_split": value}, {"dataframe_records": value},
             {"dataframe_split": {"columns": value, "data": value}}, {"instances": [value] * 3}]
    return st.sampled_from(forms).map(lambda form: json.dumps(form, allow_nan=True))


JSON_BODIES = JSON_VALUES.flatmap(_envelopes)
JSONLINES_BODIES = st.lists(JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)), min_size=1, max_size=5) \
    .map("\n".join)
CSV_CELLS = st.text(max_size=12) | st.floats(allow_nan=True, allow_infinity=True).map(repr) | \
    st.integers().map(str) | st.sampled_from(["", '"', '"a,b"', "\r", "\x00", "1e999", *FEATURES])
CSV_BODIES = st.lists(st.lists(CSV_CELLS, max_size=len(FEATURES) + 2), min_size=1, max_size=6) \
    .map(lambda rows: "\n".join(",".join(row) for row in rows))
NESTED = st.integers(min_value=1, max_value=60_000).map(lambda depth: "[" * depth + "]" * depth)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


NPY_BODIES = hnp.arrays(dtype=hnp.scalar_dtypes(), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=30)) \
    .map(_npy)
BODIES = (st.binary(max_size=3000) | JSON_BODIES.map(str.encode) | JSONLINES_BODIES.map(str.encode) |
          CSV_BODIES.map(str.encode) | NESTED.map(str.encode) | NPY_BODIES |
          CSV_BODIES.map(lambda text: text.encode("utf-16")))


def _never_a_server_error(client: FlaskClient, body: bytes, content_type: str, accept: str | None) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    response = client.post("/invocations", data=body, content_type=content_type, headers=headers)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        error = json.loads(response.get_data(as_text=True))
        assert isinstance(error["error"], str) and isinstance(error["message"], str)
        assert "Traceback" not in error["message"]


@PROPERTY
@given(body=BODIES, content_type=CONTENT_TYPES, accept=ACCEPTS)
def test_builtin_codecs_never_answer_500(client_for: ClientFactory, mixed_model: Regressor, numeric_model: Regressor,
                                         body: bytes, content_type: str, accept: str | None) -> None:
    for model in (mixed_model, numeric_model):   # numeric_model also reads application/x-npy
        _never_a_server_error(client_for(model), body, content_type, accept)


@pytest.fixture
def default_handlers(handlers_for: ClientFactory) -> FlaskClient:
    """A user module with only model_fn: every request goes through the safe default input, predict and
    output functions (a torch module, so the default predict_fn runs it)."""
    return handlers_for("""
        import torch

        def model_fn(model_dir):
            return torch.nn.Linear(3, 1)
    """)


@PROPERTY
@given(body=BODIES, content_type=CONTENT_TYPES, accept=ACCEPTS)
def test_default_handlers_never_answer_500(default_handlers: FlaskClient, body: bytes, content_type: str,
                                           accept: str | None) -> None:
    _never_a_server_error(default_handlers, body, content_type, accept)
