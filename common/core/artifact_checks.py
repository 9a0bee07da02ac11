"""Checking saved artifacts before any work: what is missing or unreadable, file by file, and the re-runs that fix it.

05_infer checks every file it will read (fold models, the ensemble) up front, so a missing or truncated file fails
in seconds with its path and the fix. `Problems` gathers the findings of every check into one message.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from common.core.errors import PipelineError

ENSEMBLE_FILE = "ensemble.json"
"""04_ensemble's description of the ensemble, in its artifacts folder."""
TRUNCATED = "truncated or corrupt"
COPY_HINT = "a truncated file is usually an interrupted copy, download or upload"


class ArtifactError(PipelineError):
    """An artifact 05_infer needs is missing or unreadable; the message names it."""


class Problems:
    """What is wrong with an artifacts folder, file by file, and the re-runs that would make the files again."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fixes: dict[str, None] = {}  # an ordered set
        self.unreadable = False

    def missing(self, path: Path | str, fix: str, what: str = "") -> None:
        self.lines.append(f"{path}{what}: not found")
        self.fixes[fix] = None

    def bad(self, path: Path | str, problem: str, fix: str) -> None:
        self.lines.append(f"{path}: {problem}")
        self.fixes[fix] = None
        self.unreadable = True

    def __bool__(self) -> bool:
        return bool(self.lines)


def escapes(folder: Path, entry: object) -> str | None:
    """Why `entry`, a path an artifact file names relative to `folder`, is refused, or None when it is a relative
    path that resolves (symlinks followed) to something inside `folder`. Checked before anything there is read:
    an artifact must not make 05_infer or `make kaggle` read or ship a file from elsewhere on the machine."""
    if not isinstance(entry, str) or not entry:
        return f"{entry!r} is not a file or folder name"
    if Path(entry).is_absolute():
        return f"{entry!r} is an absolute path"
    base = folder.resolve()
    target = (folder / entry).resolve()
    if base not in target.parents:
        return f"{entry!r} resolves to {target}, outside {base}"
    return None


def json_problem(path: Path) -> tuple[object, str | None]:
    """(the parsed JSON at `path`, None), or (None, what is wrong with it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason} at byte {exc.start}): {TRUNCATED}"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc}): {TRUNCATED}"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"


def read_json(path: Path, problems: Problems, fix: str, kind: type = dict) -> object | None:
    """The JSON at `path` if it is there, parses and is a `kind`; otherwise None and a line in `problems`."""
    if not path.is_file():
        problems.missing(path, fix)
        return None
    value, problem = json_problem(path)
    if problem is None and not isinstance(value, kind):
        problem = f"holds a JSON {type(value).__name__}, not a {kind.__name__}: {TRUNCATED}"
    if problem is not None:
        problems.bad(path, problem, fix)
        return None
    return value


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at `path` cannot be opened, or None. Reads the header only (no weights)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            n_tensors = len(list(handle.keys()))  # the header is checked against the file's size on open
    except SafetensorError as exc:
        return f"not a readable safetensors file ({exc}): {TRUNCATED}"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if n_tensors else f"holds no tensors: {TRUNCATED}"
