"""Quadratic weighted kappa (QWK), the competition metric, and the input checks every scorer shares.

Scores are integers `min_label .. min_label + n_classes - 1` (1..6 for this competition). `qwk` builds
the confusion matrix with one `np.bincount` and compares the observed quadratic disagreement with the
one expected if truth and prediction were independent with the same marginals:

    kappa = 1 - sum_ij W_ij O_ij / sum_ij W_ij E_ij,   W_ij = (i - j)^2,   E = outer(rows, cols) / N

It equals `sklearn.metrics.cohen_kappa_score(..., weights="quadratic", labels=1..6)` but is about two
orders of magnitude faster, and returns 0.0 (not NaN) when the expected disagreement is zero (for
example when truth and predictions are one and the same constant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

N_CLASSES = 6
MIN_LABEL = 1

_EPS = 1e-12


def check_labels(
    values: ArrayLike, name: str = "y", n_classes: int = N_CLASSES, min_label: int = MIN_LABEL
) -> np.ndarray:
    """Return `values` as a 1-D int64 array of scores, or raise ValueError naming the problem.

    Accepts integer arrays and float arrays holding whole numbers; rejects NaN, fractions and labels
    outside `min_label .. min_label + n_classes - 1`, naming the first offending row.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer scores, got dtype {arr.dtype}")
    max_label = min_label + n_classes - 1
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} contains NaN or infinite labels (first at row {row}); scores must be integers")
        frac = arr != np.round(arr)
        if frac.any():
            row = int(np.flatnonzero(frac)[0])
            raise ValueError(f"{name} contains non-integer labels (first at row {row}: {arr[row]!r}); "
                             "round or threshold predictions before scoring them")
    out = arr.astype(np.int64)
    outside = (out < min_label) | (out > max_label)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        found = sorted({int(v) for v in np.unique(out[outside])})
        raise ValueError(f"{name} contains labels outside {min_label}..{max_label}: {found[:10]} "
                         f"(first at row {row})")
    return out


def check_predictions(values: ArrayLike, name: str = "preds", allow_inf: bool = False) -> np.ndarray:
    """Return continuous predictions as a 1-D float64 array; raise ValueError on NaN or a bad shape."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = "NaN" if allow_inf else "NaN or infinite"
        raise ValueError(f"{name} contains {int(bad.sum())} {kind} values (first at row {row}); "
                         "fix the model output or drop those rows before thresholding")
    return arr


def check_sample_weight(sample_weight: ArrayLike | None, n_rows: int) -> np.ndarray | None:
    """Return weights as a 1-D float64 array of length `n_rows` (or None); raise ValueError if invalid."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},), got {w.shape}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        row = int(np.flatnonzero(~np.isfinite(w) | (w < 0))[0])
        raise ValueError(f"sample_weight must be finite and non-negative (row {row}: {w[row]!r})")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to zero; at least one row needs a positive weight")
    return w


def check_same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError if the named arrays do not all have the same number of rows."""
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {described}; every input needs one entry per essay")


def confusion(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    n_classes: int = N_CLASSES,
    min_label: int = MIN_LABEL,
    sample_weight: ArrayLike | None = None,
) -> np.ndarray:
    """Confusion matrix, shape (n_classes, n_classes): rows are true scores, columns predicted ones.

    Entries are row counts (int64), or summed weights (float64) when `sample_weight` is given.
    """
    t = check_labels(y_true, "y_true", n_classes, min_label)
    p = check_labels(y_pred, "y_pred", n_classes, min_label)
    check_same_length(y_true=t, y_pred=p)
    w = check_sample_weight(sample_weight, len(t))
    return _confusion(t - min_label, p - min_label, n_classes, w)


def _confusion(t0: np.ndarray, p0: np.ndarray, n_classes: int, w: np.ndarray | None) -> np.ndarray:
    flat = np.bincount(t0 * n_classes + p0, weights=w, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def quadratic_weights(n_classes: int = N_CLASSES) -> np.ndarray:
    """Disagreement weights W_ij = (i - j)^2, shape (n_classes, n_classes), float64."""
    idx = np.arange(n_classes, dtype=np.float64)
    return (idx[:, None] - idx[None, :]) ** 2


def qwk_from_confusion(matrix: np.ndarray) -> float:
    """QWK of a confusion matrix (rows true, columns predicted); 0.0 when no disagreement is expected."""
    o = np.asarray(matrix, dtype=np.float64)
    total = o.sum()
    if total <= 0:
        return 0.0
    w = quadratic_weights(o.shape[0])
    expected = np.outer(o.sum(axis=1), o.sum(axis=0)) / total
    denominator = float((w * expected).sum())
    if denominator <= _EPS * total:
        return 0.0
    return float(1.0 - (w * o).sum() / denominator)


def qwk(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    n_classes: int = N_CLASSES,
    min_label: int = MIN_LABEL,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Quadratic weighted kappa between integer scores.

    Args:
        y_true: true scores, shape (n,), integers in `min_label .. min_label + n_classes - 1`.
        y_pred: predicted scores, shape (n,), same range (threshold or round continuous output first).
        sample_weight: optional non-negative row weights, shape (n,).

    Returns:
        QWK in [-1, 1]; 0.0 in the degenerate case where no disagreement is expected.
    """
    return qwk_from_confusion(confusion(y_true, y_pred, n_classes, min_label, sample_weight))


def qwk_by_group(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: ArrayLike | Sequence[object],
    n_classes: int = N_CLASSES,
    min_label: int = MIN_LABEL,
    sample_weight: ArrayLike | None = None,
) -> dict[str, float | None]:
    """QWK within each group (fold, prompt cluster, origin ...), keyed by `str(group)` in sorted order.

    A group whose true scores take fewer than two distinct values has no meaningful kappa and is
    reported as None, so the result stays JSON-serialisable.
    """
    t = check_labels(y_true, "y_true", n_classes, min_label)
    p = check_labels(y_pred, "y_pred", n_classes, min_label)
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    check_same_length(y_true=t, y_pred=p, groups=g)
    w = check_sample_weight(sample_weight, len(t))
    keys, codes = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    result: dict[str, float | None] = {}
    for code, key in enumerate(keys):
        rows = codes == code
        if np.unique(t[rows]).size < 2:
            result[str(key)] = None
            continue
        sub_w = None if w is None else w[rows]
        if sub_w is not None and sub_w.sum() <= 0:
            result[str(key)] = None
            continue
        result[str(key)] = qwk_from_confusion(
            _confusion(t[rows] - min_label, p[rows] - min_label, n_classes, sub_w)
        )
    return result
