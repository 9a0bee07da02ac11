"""Crash-safe artifact writing: every file and every stage output folder appears whole or not at all.

A stage writes into a temporary sibling folder (`staged_dir`) and renames it into place only when all
of its work succeeded, so a crash or a validation error never leaves a half-written artifact in
`output/` that a later stage could read. Single files go through `atomic_write` the same way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    """The process umask: read from /proc where Linux shows it, else set to 0 and put back at once (another
    thread creating a file in that instant would get umask 0, hence /proc first)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode a plain open() would give a new file (0644 under umask 022), not mkstemp's 0600."""
    return 0o666 & ~_umask()


def _dir_mode() -> int:
    """The mode a plain mkdir would give a new folder (0755 under umask 022), not mkdtemp's 0700."""
    return 0o777 & ~_umask()


class WriteFailed(RuntimeError):
    """A file could not be written for want of space (or a failing disk): the message names it, and the fix."""


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
"""OSError numbers of a write the disk refused: no space, quota exceeded, file too large, I/O error."""
WRITE_FAILURES = ("iostream error", "file write failed", "failed writing", "cannot write", "no space left")
"""What torch.save (`basic_ios::clear: iostream error`, `PytorchStreamWriter failed writing file`) and LightGBM
(`Cannot write ...`) say when the disk refuses their bytes."""


def write_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a write the disk refused, not a bug."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            return True
        library = isinstance(exc, RuntimeError) or type(exc).__name__ == "LightGBMError"
        if library and any(text in str(exc).lower() for text in WRITE_FAILURES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_failed(path: Path, exc: BaseException, folder: bool = False) -> WriteFailed:
    """The one message of a refused write of `path` (`folder`: of a file somewhere under it): what failed, the free
    space there, and the fix."""
    try:
        there = next(p for p in (path.absolute(), *path.absolute().parents) if p.is_dir())
        free = f"{shutil.disk_usage(there).free / 2**20:,.0f} MiB free there now"
    except (OSError, StopIteration):
        free = "its free space unknown"
    what = f"a file under {path}" if folder else str(path)
    return WriteFailed(
        f"{what}: could not be written ({type(exc).__name__}: {' '.join(str(exc).split())}); {free}. The file "
        "was not replaced: the last complete output is as it was. Fix: free space on that disk (old checkpoints "
        "under <paths.output>/checkpoints, other runs' outputs) or set paths.output to a disk with room, then "
        "re-run: finished folds and stages are kept")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, on error delete it.

    The final file gets the mode a plain open() would give it (0644 under umask 022). A write the disk refuses
    (full, over quota: `write_failure`) is raised as `WriteFailed`, naming `path` and the fix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())  # the writer may have replaced the file: set the mode last
        os.replace(tmp_path, path)
    except WriteFailed:
        raise  # a file written inside this one's body: named already
    except Exception as exc:
        # A LightGBMError here is Booster.save_model failing to write, whatever its words: nothing else runs here.
        if write_failure(exc) or type(exc).__name__ == "LightGBMError":
            raise write_failed(path, exc) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as parquet (no index), atomically."""
    with atomic_write(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index), atomically."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
"""Staging folders carry this host's tag: process ids are only checked on the host that made them."""
_OWN_STAGING: set[str] = set()
"""Staging folders this process made and has not finished with (never cleaned as stale)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(final: Path) -> list[Path]:
    """Clear what killed processes of this host left beside `final`: `.<name>.tmp-<host>-<pid>-*` folders
    are removed, and a `.<name>.old-<host>-<pid>-*` folder (the previous output, moved aside just before the
    new one was renamed in) is put back as `final` when `final` is missing, removed otherwise.

    Folders of another live process, the ones this process is using, another host's and other names are
    kept; a folder with this process's id that it did not make was left by an earlier process with the same
    (reused) id. POSIX only: elsewhere nothing is removed. Returns the folders removed or restored.
    """
    if os.name != "posix" or not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-{_HOST}-(\d+)-.+$")
    touched = []
    for sibling in sorted(final.parent.iterdir()):
        match = pattern.match(sibling.name)
        if not match or str(sibling) in _OWN_STAGING:
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and _pid_alive(pid):  # our own id on a folder we did not make: a reused id
            continue
        if match.group(1) == "old" and not final.exists():
            os.replace(sibling, final)
        elif sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        touched.append(sibling)
    return touched


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` whole.

    On any exception the temporary folder is removed and `final` is left as it was. A process killed
    outright (SIGKILL, out of memory) cannot clean up: the next `staged_dir` for the same folder clears
    what it left (`remove_stale_staging`; the folder names carry the host and process id). The folder
    gets the mode a plain mkdir would give it (0755 under umask 022).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    prefix = f".{final.name}.%s-{_HOST}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix % "tmp", dir=final.parent))
    _OWN_STAGING.add(str(tmp))
    old = None
    try:
        os.chmod(tmp, _dir_mode())
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix % "old", dir=final.parent))  # a unique name ...
            old.rmdir()  # ... to move the previous output to
            _OWN_STAGING.add(str(old))
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        _OWN_STAGING.discard(str(tmp))
        if old is not None:
            _OWN_STAGING.discard(str(old))
        if tmp.exists():
            shutil.rmtree(tmp)
