"""Fold locks: a lock file in a unit's checkpoint folder names the one process that trains the unit.

`fold_lock` takes it for the time the unit trains (a dead holder's is taken over); `busy_lock` only looks, so
that no fold worker starts on a unit another live process holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from common.train.engine import TrainingError

log = logging.getLogger(__name__)

LOCK_FILE = "lock"


@contextlib.contextmanager
def fold_lock(folder: Path, what: str, take: bool = True) -> Iterator[None]:
    """One process at a time trains a fold: a lock file in its checkpoint folder names the holder.

    Two runs of the same fold would write one checkpoint in turn and each resume the other's. A lock whose
    holder is a process of this host that no longer runs (killed) is taken over; any other is an error
    saying who holds it. `take=False` (data-parallel ranks other than 0) does nothing.
    """
    if not take:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            # Our own pid in a lock we did not take: a process of an earlier boot or container had it.
            dead = not _running(holder.get("pid")) or holder.get("pid") == me["pid"]
            if holder.get("host") == me["host"] and dead:
                log.warning("%s: lock %s of process %s, which no longer runs, taken over", what, lock,
                            holder.get("pid"))
                lock.unlink(missing_ok=True)
                continue
            raise TrainingError(_busy_message(what, holder, lock)) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _busy_message(what: str, holder: dict, lock: Path) -> str:
    return (f"{what} is being trained by process {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('since')} (lock {lock}); two runs of one fold would share its checkpoint. Wait "
            f"for it or stop it; if that process is gone, delete {lock}")


def busy_lock(folder: Path, what: str) -> str | None:
    """Why `fold_lock` would refuse the unit whose checkpoint folder is `folder` now (a live process of this host,
    or one of another host, holds its lock), or None. Looks only: takes nothing."""
    lock = folder / LOCK_FILE
    if not lock.is_file():
        return None
    holder = _lock_holder(lock)
    if holder.get("host") == socket.gethostname() and (not _running(holder.get("pid"))
                                                       or holder.get("pid") == os.getpid()):
        return None
    return _busy_message(what, holder, lock)


def _lock_holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _running(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
