"""card.py: a missing or damaged model card never stops a model from serving; read_summary says why."""

from __future__ import annotations

import pathlib

from model.card import CARD_NAME, read_summary, write_card


def test_read_summary_of_a_card_an_absent_one_and_a_damaged_one(tmp_path: pathlib.Path) -> None:
    assert read_summary(tmp_path).startswith("none (model-card.json is absent")
    write_card({"summary": "hyperplane-regressor 0123456789ab predicts Price"}, tmp_path)
    assert read_summary(tmp_path) == "hyperplane-regressor 0123456789ab predicts Price"
    (tmp_path / CARD_NAME).write_text("{not json")
    assert read_summary(tmp_path) == "unreadable (JSONDecodeError); the model serves without it"
    (tmp_path / CARD_NAME).write_text("[1, 2]")
    assert read_summary(tmp_path).startswith("unreadable (TypeError)")
