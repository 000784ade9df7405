"""2,000 malformed requests (tests/serving/malformed.py, seed 0) against the app in process, for a model
with categorical features and an all-numeric one (which also reads x-npy): every one a 4xx with a JSON
error, never a 5xx, and the server answers normally afterwards. A few seconds; the same corpus runs against
the container in tests/container/test_serve_faults.py."""

from __future__ import annotations

from collections import Counter

import pytest
from flask.testing import FlaskClient

from tests.serving.malformed import FAMILIES, Malformed, malformed_requests
from tests.serving.requests_data import ROWS, csv_body


@pytest.fixture(scope="module")
def cases() -> list[Malformed]:
    return malformed_requests(count=2000, seed=0)


def test_the_corpus_is_deterministic_and_covers_every_family(cases: list[Malformed]) -> None:
    again = malformed_requests(count=2000, seed=0)
    assert [(c.description, c.body) for c in again] == [(c.description, c.body) for c in cases]
    assert len(cases) == 2000
    families = Counter(case.family for case in cases)
    assert len(families) == len(FAMILIES) + 1 and min(families.values()) >= 12   # + huge lines


@pytest.mark.parametrize("model", ["client", "numeric_client"])
def test_malformed_requests_are_4xx_never_5xx(cases: list[Malformed], model: str,
                                              request: pytest.FixtureRequest) -> None:
    client: FlaskClient = request.getfixturevalue(model)
    answers: Counter[tuple[str, int]] = Counter()
    for case in cases:
        response = client.post("/invocations", data=case.body, headers=case.headers())
        answers[(case.family, response.status_code)] += 1
        assert 400 <= response.status_code < 500, (case.family, case.description, response.data[:300])
        assert response.mimetype == "application/json" and response.json is not None
        assert set(response.json) >= {"error", "message"}
    statuses = Counter(status for (_, status), count in answers.items() for _ in range(count))
    assert set(statuses) <= {400, 406, 413, 415}, statuses
    assert client.get("/ping").status_code == 200


def test_the_server_answers_normally_afterwards(cases: list[Malformed], client: FlaskClient) -> None:
    for case in cases[:200]:
        client.post("/invocations", data=case.body, headers=case.headers())
    response = client.post("/invocations", data=csv_body(ROWS), content_type="text/csv")
    assert response.status_code == 200 and response.data.count(b"\n") == len(ROWS)
