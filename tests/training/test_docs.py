"""The README documents what the code does: every hyperparameter, with its real default."""

from container.hyperparameters import markdown_table
from tests.conftest import ROOT


def test_readme_lists_every_hyperparameter_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: .venv/bin/python -m container.hyperparameters"
