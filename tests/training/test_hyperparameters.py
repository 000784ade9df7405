"""Hyperparameters as SDK v2, SDK v3 / framework estimators and the raw API write them."""

import pytest

from container.hyperparameters import HyperparameterError, decode, describe, parse_hyperparameters
from model.config import TrainingConfig

# The same settings in each quoting style seen in the wild (see ../shared/docs/sdk-local-mode.md).
STYLES = {
    "sdk v2 str()": {"hidden_layers": "[64, 32]", "categorical_columns": "['Met_Color', 'Automatic']",
                     "deterministic": "True", "epochs": "50", "learning_rate": "0.001", "target": "Price"},
    "sdk v3 json": {"hidden_layers": "[64, 32]", "categorical_columns": '["Met_Color", "Automatic"]',
                    "deterministic": "true", "epochs": "50", "learning_rate": "0.001", "target": "Price"},
    "json-encoded": {"hidden_layers": '"64,32"', "categorical_columns": '"Met_Color,Automatic"',
                     "deterministic": '"TRUE"', "epochs": '"50"', "learning_rate": '"1e-3"',
                     "target": '"Price"'},
    "raw api": {"hidden_layers": "64,32", "categorical_columns": "Met_Color, Automatic",
                "deterministic": "yes", "epochs": "50", "learning_rate": "1e-3", "target": "Price"},
    "native json": {"hidden_layers": [64, 32], "categorical_columns": ["Met_Color", "Automatic"],
                    "deterministic": True, "epochs": 50, "learning_rate": 0.001, "target": "Price"},
}


@pytest.mark.parametrize("style", STYLES)
def test_every_quoting_style_gives_the_same_config(style: str) -> None:
    config = parse_hyperparameters(STYLES[style])
    assert config == TrainingConfig(hidden_layers=(64, 32), categorical_columns=("Met_Color", "Automatic"),
                                    deterministic=True, epochs=50, learning_rate=0.001, target="Price")


@pytest.mark.parametrize("raw", ["False", "false", "FALSE", '"false"', "0", "no", False])
def test_false_in_every_spelling(raw: object) -> None:
    assert parse_hyperparameters({"deterministic": raw}).deterministic is False


@pytest.mark.parametrize("raw", ["", "[]", '""', "()"])
def test_empty_hidden_layers_is_the_linear_model(raw: str) -> None:
    assert parse_hyperparameters({"hidden_layers": raw}).hidden_layers == ()


def test_platform_keys_are_ignored() -> None:
    config = parse_hyperparameters({"sagemaker_program": "train.py", "sagemaker_region": '"us-east-1"',
                                    "_tuning_objective_metric": "validation:rmse", "epochs": "7"})
    assert config.epochs == 7


def test_unknown_key_fails_and_lists_the_valid_ones() -> None:
    with pytest.raises(HyperparameterError) as caught:
        parse_hyperparameters({"epoch": "10"})
    message = str(caught.value)
    assert "'epoch'" in message
    assert all(name in message for name, *_ in describe())


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"epochs": "ten"}, "epochs='ten' is invalid: expected a whole number"),
    ({"epochs": "1.5"}, "expected a whole number"),
    ({"learning_rate": "fast"}, "learning_rate='fast' is invalid: expected a number"),
    ({"deterministic": "maybe"}, "expected true or false"),
    ({"hidden_layers": "64,x"}, "hidden_layers='64,x' is invalid"),
    ({"target_transform": "sqrt"}, "target_transform must be one of none, log"),
    ({"epochs": "0"}, "epochs must be at least 1"),
])
def test_bad_values_name_the_key_and_the_problem(raw: dict[str, str], fragment: str) -> None:
    with pytest.raises(HyperparameterError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        parse_hyperparameters(raw)


def test_decode_keeps_plain_strings() -> None:
    assert decode("hello world") == "hello world"
    assert decode("{'a': 1}") == {"a": 1}
    assert decode('{"a": 1}') == {"a": 1}
