"""Where user code is found (SAGEMAKER_SUBMIT_DIRECTORY, then <model_dir>/code), how ServingSettings carries
it, and the master's start-up decision (startup.prepare): handler mode, built-in mode, neither, and a
requirements.txt with and without pip."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence

import pytest

from container.serving.settings import ServingSettings, SettingsError
from container.serving.startup import StartError, prepare
from container.serving.user_code import UserCode, UserCodeError, locate
from tests.serving.conftest import make_settings


def _program(folder: pathlib.Path, name: str = "inference.py") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("def model_fn(model_dir):\n    return None\n")
    return folder


def test_submit_directory_first_then_model_code(tmp_path: pathlib.Path) -> None:
    submit, model_code = _program(tmp_path / "opt-ml-code"), _program(tmp_path / "model" / "code")
    search = locate({"SAGEMAKER_SUBMIT_DIRECTORY": str(submit)}, tmp_path / "model")
    assert search.found == UserCode(submit, "inference", "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY", None)
    assert search.folders == (submit, model_code)
    (submit / "inference.py").unlink()
    found = locate({"SAGEMAKER_SUBMIT_DIRECTORY": str(submit)}, tmp_path / "model").found
    assert found is not None and found.folder == model_code and found.origin == "the model's code/ folder"
    assert found.file == model_code / "inference.py"


@pytest.mark.parametrize("submit", ["s3://bucket/job/source/sourcedir.tar.gz", "/nowhere/code", ""])
def test_remote_or_missing_submit_directory_is_skipped(tmp_path: pathlib.Path, submit: str) -> None:
    model_code = _program(tmp_path / "model" / "code")
    search = locate({"SAGEMAKER_SUBMIT_DIRECTORY": submit}, tmp_path / "model")
    assert search.found is not None and search.found.folder == model_code
    assert search.folders == (model_code,)


def test_submit_directory_equal_to_model_code_is_looked_in_once(tmp_path: pathlib.Path) -> None:
    search = locate({"SAGEMAKER_SUBMIT_DIRECTORY": str(_program(tmp_path / "model" / "code", "other.py"))},
                    tmp_path / "model")
    assert search.found is None and search.folders == (tmp_path / "model" / "code",)


@pytest.mark.parametrize(("program", "file", "module"), [
    ("serve_me.py", "serve_me.py", "serve_me"),
    ("serve_me", "serve_me.py", "serve_me"),
    ("pkg.handlers", "pkg/handlers.py", "pkg.handlers"),
])
def test_sagemaker_program_names_the_module(tmp_path: pathlib.Path, program: str, file: str, module: str) -> None:
    folder = tmp_path / "model" / "code"
    (folder / file).parent.mkdir(parents=True)
    (folder / file).write_text("")
    found = locate({"SAGEMAKER_PROGRAM": program}, tmp_path / "model").found
    assert found is not None and (found.module, found.program, found.file) == (module, program, folder / file)


def test_an_explicit_program_found_nowhere_is_an_error_naming_where(tmp_path: pathlib.Path) -> None:
    submit = _program(tmp_path / "submit")
    with pytest.raises(UserCodeError) as raised:
        locate({"SAGEMAKER_PROGRAM": "predict.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(submit)}, tmp_path / "model")
    assert str(raised.value) == (f"SAGEMAKER_PROGRAM=predict.py not found: looked for predict.py in {submit} and "
                                 f"{tmp_path / 'model' / 'code'}")
    with pytest.raises(UserCodeError, match="skipped: not a local folder"):
        locate({"SAGEMAKER_PROGRAM": "predict.py", "SAGEMAKER_SUBMIT_DIRECTORY": "s3://b/k"}, tmp_path / "model")
    with pytest.raises(UserCodeError, match="not an importable module name"):
        locate({"SAGEMAKER_PROGRAM": "my-script.py"}, tmp_path / "model")


def test_without_sagemaker_program_no_code_is_no_error(tmp_path: pathlib.Path) -> None:
    search = locate({}, tmp_path / "model")
    assert search.found is None and search.folders == (tmp_path / "model" / "code",)


def test_requirements_txt_is_noted(tmp_path: pathlib.Path) -> None:
    folder = _program(tmp_path / "model" / "code")
    (folder / "requirements.txt").write_text("six\n")
    found = locate({}, tmp_path / "model").found
    assert found is not None and found.requirements == folder / "requirements.txt"


def test_settings_carry_the_user_code_and_default_accept(tmp_path: pathlib.Path) -> None:
    folder = _program(tmp_path / "model" / "code")
    settings = ServingSettings.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)}, cpus=1, gpus=0)
    assert settings.user_code is not None and settings.user_code.folder == folder
    assert settings.code_dirs == (folder,)
    assert settings.default_accept == "application/json"
    accept = ServingSettings.from_environ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "Text/CSV"}, cpus=1, gpus=0)
    assert accept.default_accept == "text/csv" and accept.user_code is None
    for bad in ("*/*", "json", "text/csv, application/json"):
        with pytest.raises(SettingsError, match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
            ServingSettings.from_environ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": bad}, cpus=1, gpus=0)
    with pytest.raises(UserCodeError):
        ServingSettings.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path), "SAGEMAKER_PROGRAM": "x.py"}, cpus=1,
                                     gpus=0)


def _code(tmp_path: pathlib.Path, requirements: bool = False) -> UserCode:
    folder = _program(tmp_path / "code")
    if requirements:
        (folder / "requirements.txt").write_text("six\n")
    return UserCode(folder, "inference", "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY",
                    folder / "requirements.txt" if requirements else None)


def _no_install(command: Sequence[str], cwd: pathlib.Path) -> int:
    raise AssertionError(f"nothing should be installed: {command}")


def test_user_code_means_handler_mode(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, user_code=_code(tmp_path))
    with caplog.at_level(logging.INFO, logger="hyperplane.serve"):
        assert prepare(settings, pip_available=lambda: True, install=_no_install) == "handlers"
    assert (f"serving user handlers inference from {tmp_path / 'code'} (SAGEMAKER_PROGRAM=inference.py, found in "
            "SAGEMAKER_SUBMIT_DIRECTORY)") in caplog.text


def test_an_artifact_without_user_code_means_built_in_mode(tmp_path: pathlib.Path,
                                                           mixed_model_dir: pathlib.Path) -> None:
    assert prepare(make_settings(tmp_path, model_dir=mixed_model_dir)) == "artifact"


def test_neither_code_nor_artifact_is_one_clear_error(tmp_path: pathlib.Path) -> None:
    model = tmp_path / "model"
    settings = make_settings(tmp_path, code_dirs=(tmp_path / "opt-ml-code", model / "code"))
    with pytest.raises(StartError) as raised:
        prepare(settings)
    assert str(raised.value) == (f"no user code (inference.py in {tmp_path / 'opt-ml-code'} or {model / 'code'}) "
                                 f"and no hyperplane artifact in {model}")


def test_requirements_are_installed_with_pip_before_forking(tmp_path: pathlib.Path) -> None:
    settings = make_settings(tmp_path, user_code=_code(tmp_path, requirements=True))
    commands: list[Sequence[str]] = []
    folders: list[pathlib.Path] = []

    def install(command: Sequence[str], cwd: pathlib.Path) -> int:
        commands.append(command)
        folders.append(cwd)
        return 0

    assert prepare(settings, pip_available=lambda: True, install=install) == "handlers"
    assert [list(command[1:]) for command in commands] == [
        ["-m", "pip", "install", "--no-input", "-r", str(tmp_path / "code" / "requirements.txt")]]
    assert folders == [tmp_path / "code"]   # relative paths in the file resolve in the code folder
    with pytest.raises(StartError, match=r"pip install -r .*requirements.txt failed with exit code 1"):
        prepare(settings, pip_available=lambda: True, install=lambda command, cwd: 1)


def test_requirements_without_pip_refuse_to_start(tmp_path: pathlib.Path) -> None:
    settings = make_settings(tmp_path, user_code=_code(tmp_path, requirements=True))
    with pytest.raises(StartError) as raised:
        prepare(settings, pip_available=lambda: False, install=_no_install)
    assert "has no pip to install them at start" in str(raised.value)
    assert "serve with the training image, or build an image FROM hyperplane-serve" in str(raised.value)
