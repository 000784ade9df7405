"""Where the user's inference handlers are: SAGEMAKER_PROGRAM looked up in the code folders, nothing imported.

    search = locate(environ, model_dir)     # CodeSearch: the folders looked in, the UserCode found or None
                                            # UserCodeError: an explicit SAGEMAKER_PROGRAM found nowhere

The module is SAGEMAKER_PROGRAM (default `inference.py`; `name.py` and `name` both mean the file name.py,
a dotted name is a file in a package), looked up in this order:

    1. SAGEMAKER_SUBMIT_DIRECTORY, when it is an existing local folder: SDK local mode mounts source_dir at
       /opt/ml/code and sets it to /opt/ml/code; on AWS it is /opt/ml/model/code. An s3:// URI (the
       training job's code, which the SDK repacks into model.tar.gz's code/) or a missing folder is skipped.
    2. <model_dir>/code: where the SDK puts source_dir inside model.tar.gz.

Without SAGEMAKER_PROGRAM a missing inference.py only means "no user code" (the built-in model is served);
with it, a file found nowhere is an error naming every place looked in. A requirements.txt beside the
module is noted; startup.py decides what to do with it. Pure: reads the given mapping and the file system.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PROGRAM = "inference.py"
REQUIREMENTS = "requirements.txt"


class UserCodeError(Exception):
    """SAGEMAKER_PROGRAM names a module that cannot be served; the message says where it was looked for."""


@dataclass(frozen=True)
class UserCode:
    folder: pathlib.Path                   # goes first on sys.path in each worker
    module: str                            # the importable name, e.g. "inference"
    program: str                           # SAGEMAKER_PROGRAM as given, or the default
    origin: str                            # which rule found it, for the start-up log line
    requirements: pathlib.Path | None      # folder/requirements.txt when there is one

    @property
    def file(self) -> pathlib.Path:
        return self.folder / module_file(self.module)


@dataclass(frozen=True)
class CodeSearch:
    """The outcome of `locate`: the folders looked in (in order) and what was found there, if anything."""

    folders: tuple[pathlib.Path, ...]
    found: UserCode | None


def locate(environ: Mapping[str, str], model_dir: pathlib.Path) -> CodeSearch:
    given = environ.get("SAGEMAKER_PROGRAM", "").strip()
    program = given or DEFAULT_PROGRAM
    module = program.removesuffix(".py")
    if not all(part.isidentifier() for part in module.split(".")):
        raise UserCodeError(f"SAGEMAKER_PROGRAM={given!r} is not an importable module name "
                            "(letters, digits and underscores, e.g. inference.py)")
    candidates: list[tuple[pathlib.Path, str]] = []
    skipped = ""
    submit = environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
    if submit and "://" not in submit and pathlib.Path(submit).is_dir():
        candidates.append((pathlib.Path(submit), "SAGEMAKER_SUBMIT_DIRECTORY"))
    elif submit:
        skipped = f"; SAGEMAKER_SUBMIT_DIRECTORY={submit} skipped: not a local folder"
    candidates.append((model_dir / "code", "the model's code/ folder"))
    folders = tuple(dict.fromkeys(folder for folder, _ in candidates))   # SDK: both may be /opt/ml/model/code
    for folder, origin in candidates:
        if (folder / module_file(module)).is_file():
            requirements = folder / REQUIREMENTS
            return CodeSearch(folders, UserCode(folder, module, program, origin,
                                                requirements if requirements.is_file() else None))
    if given:
        raise UserCodeError(f"SAGEMAKER_PROGRAM={given} not found: looked for {module_file(module)} in "
                            f"{' and '.join(map(str, folders))}{skipped}")
    return CodeSearch(folders, None)


def module_file(module: str) -> pathlib.Path:
    """`pkg.handlers` -> pkg/handlers.py, relative to the code folder."""
    return pathlib.Path(*module.split(".")).with_suffix(".py")
