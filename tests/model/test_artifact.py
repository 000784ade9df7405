import pathlib
import pickle

import numpy as np
import pytest
import torch

from model import artifact
from model.config import TrainingConfig
from model.table import Table
from model.training import fit


@pytest.fixture(scope="module")
def saved(small_cars: Table, tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, np.ndarray]:
    result = fit(small_cars, TrainingConfig(hidden_layers=(8,), ensemble_size=2, epochs=5))
    folder = tmp_path_factory.mktemp("model")
    artifact.save(result.regressor, folder)
    return folder, result.regressor.predict(small_cars.without("Price"))


def test_round_trip_predicts_the_same(saved: tuple[pathlib.Path, np.ndarray], small_cars: Table) -> None:
    folder, expected = saved
    loaded = artifact.load(folder)
    np.testing.assert_array_equal(loaded.predict(small_cars.without("Price")), expected)
    assert loaded.config.hidden_layers == (8,)
    assert loaded.feature_names == [n for n in small_cars.names if n != "Price"]


def test_artifact_describes_itself(saved: tuple[pathlib.Path, np.ndarray], small_cars: Table) -> None:
    info = artifact.load(saved[0]).info
    assert info["data_fingerprint"] == small_cars.fingerprint()
    assert info["versions"]["torch"] == torch.__version__
    assert set(info["metrics"]) == {"train", "validation"}
    assert len(info["version"]) == 12


def test_loading_never_runs_pickled_code(tmp_path: pathlib.Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    path = tmp_path / artifact.ARTIFACT_NAME
    path.write_bytes(pickle.dumps({"format": artifact.FORMAT, "x": Exploit()}))
    with pytest.raises(artifact.ArtifactError, match="not a readable artifact"):
        artifact.load(tmp_path)


def test_damaged_missing_and_future_artifacts_are_named(tmp_path: pathlib.Path,
                                                        saved: tuple[pathlib.Path, np.ndarray]) -> None:
    with pytest.raises(artifact.ArtifactError, match=r"no model artifact.*holds: nothing"):
        artifact.load(tmp_path)
    (tmp_path / artifact.ARTIFACT_NAME).write_bytes((saved[0] / artifact.ARTIFACT_NAME).read_bytes()[:500])
    with pytest.raises(artifact.ArtifactError, match="not a readable artifact"):
        artifact.load(tmp_path)
    payload = torch.load(saved[0] / artifact.ARTIFACT_NAME, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / artifact.ARTIFACT_NAME)
    with pytest.raises(artifact.ArtifactError, match="format version 99"):
        artifact.load(tmp_path)
