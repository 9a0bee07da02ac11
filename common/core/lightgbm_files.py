"""Whether a LightGBM text model file is whole, checked in Python before LightGBM reads it: its parser trusts the
file and crashes the process on one cut short. The stacker's `check` (what 05_infer verifies before any model runs)
calls it on every booster file, and `TextModel.problem` on a LightGBM text member's (both above core, so it is here).
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
from lightgbm.basic import LightGBMError

from common.core.artifact_checks import TRUNCATED


def lightgbm_model_problem(path: Path) -> str | None:
    """Why the LightGBM text model at `path` is incomplete, or None when it is whole and loads.

    The structure is checked in Python before LightGBM sees the file: LightGBM's parser trusts the
    file and crashes the process (a segmentation fault, lightgbm 4.7) on a model cut in half, and
    loads one cut in its last line without a word. Booster.save_model writes the trees (sized by the
    header's tree_sizes), 'end of trees', the parameters and, last, a 'pandas_categorical:' line.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not data.startswith(b"tree\n"):
        return f"not a LightGBM text model (it does not start with a 'tree' line): {TRUNCATED}"
    end = data.find(b"\nend of trees\n")
    if end < 0:
        return f"its trees end before the 'end of trees' line: {TRUNCATED}"
    first = data.find(b"\nTree=", 0, end + 1)
    header = data[: first if first >= 0 else end]
    for line in header.split(b"\n"):
        if line.startswith(b"tree_sizes="):
            try:
                sizes = [int(size) for size in line.removeprefix(b"tree_sizes=").split()]
            except ValueError:
                return f"its tree_sizes line is not a list of sizes: {TRUNCATED}"
            offset = first + 1
            for i, size in enumerate(sizes):
                if first < 0 or not data.startswith(b"Tree=", offset) or offset + size > end + 1:
                    return f"tree {i} of {len(sizes)} is cut short or misplaced: {TRUNCATED}"
                offset += size
    if b"\nparameters:\n" in data and b"\nend of parameters\n" not in data:
        return f"its parameters end before the 'end of parameters' line: {TRUNCATED}"
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if not (data.endswith(b"\n") and last.startswith(b"pandas_categorical:")):
        return f"it ends before its last line ('pandas_categorical:...'): {TRUNCATED}"
    try:
        lgb.Booster(model_file=str(path))
    except LightGBMError as exc:
        return f"LightGBM cannot load it ({exc}): {TRUNCATED}"
    return None
