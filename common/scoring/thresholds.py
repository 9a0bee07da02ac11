"""Cut points that turn continuous predictions into scores 1..6, fitted to maximise QWK on OOF rows.

`ThresholdSearcher` is an exact coordinate search. Predictions are sorted once and reduced to their
distinct values; a threshold is then just a cut index into that sorted list, and the confusion matrix
of any set of cuts is read off cumulative per-label counts. Moving one threshold only moves rows
between the two predicted classes on either side of it, so the QWK of *every* possible position of that
threshold (between its neighbours) is computed at once in O(1) per candidate from prefix sums:

    num(c) = sum over predicted classes j of  CW[end_j, j] - CW[start_j, j]      (CW = cumsum(H) @ W)
    den(c) = sum over predicted classes j of (S[end_j] - S[start_j]) * e_j       (e_j = W[:, j] . r / N)
    QWK    = 1 - num / den

where H holds per-distinct-value label counts (or weights), S its cumulative totals, r the true-label
totals and W_ij = (i - j)^2. One pass over the five thresholds costs O(n_distinct * K); passes repeat
until none improves. A Nelder-Mead polish from the coordinate optimum then looks for joint moves (kept
only if it improves and the thresholds stay strictly increasing), followed by another coordinate pass.

Honest figures come from nested thresholds, fitted for fold f on the other folds only: `common.scoring.oof.threshold_report`
(`common.scoring.nested.Chain` without a combiner).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from common.scoring.metrics import (
    MIN_LABEL,
    N_CLASSES,
    check_labels,
    check_predictions,
    check_same_length,
    check_sample_weight,
    quadratic_weights,
)

logger = logging.getLogger(__name__)

_IMPROVEMENT = 1e-12


def check_thresholds(thresholds: ArrayLike, n_classes: int = N_CLASSES) -> np.ndarray:
    """Return cut points as a float64 array of n_classes - 1 finite, non-decreasing values."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (n_classes - 1,):
        raise ValueError(f"thresholds must have shape ({n_classes - 1},), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"thresholds must be finite, got {t.tolist()}")
    if np.any(np.diff(t) < 0):
        raise ValueError(f"thresholds must be sorted in increasing order, got {t.tolist()}")
    return t


def apply_thresholds(
    preds: ArrayLike, thresholds: ArrayLike, n_classes: int = N_CLASSES, min_label: int = MIN_LABEL
) -> np.ndarray:
    """Map continuous predictions, shape (n,), to integer scores, shape (n,), via sorted cut points.

    A prediction p gets `min_label + #{t : t <= p}`, so p < t_1 scores 1 and p >= t_5 scores 6. The
    result never leaves `min_label .. min_label + n_classes - 1`, whatever the magnitude of p
    (including +-inf); NaN raises ValueError.
    """
    p = check_predictions(preds, "preds", allow_inf=True)
    t = check_thresholds(thresholds, n_classes)
    return (min_label + np.searchsorted(t, p, side="right")).astype(np.int64)


def round_scores(preds: ArrayLike, n_classes: int = N_CLASSES, min_label: int = MIN_LABEL) -> np.ndarray:
    """Plain rounding baseline: `clip(rint(preds), 1, 6)` as int64, shape (n,)."""
    p = check_predictions(preds, "preds", allow_inf=True)
    return np.clip(np.rint(p), min_label, min_label + n_classes - 1).astype(np.int64)


class _SortedProblem:
    """Predictions reduced to sorted distinct values with cumulative label weights, for O(1) QWK."""

    def __init__(self, preds: np.ndarray, labels0: np.ndarray, weights: np.ndarray | None, n_classes: int):
        self.values, inverse = np.unique(preds, return_inverse=True)
        n_values = self.values.size
        hist = np.bincount(inverse * n_classes + labels0, weights=weights, minlength=n_values * n_classes)
        hist = hist.reshape(n_values, n_classes).astype(np.float64)
        cum = np.zeros((n_values + 1, n_classes))
        np.cumsum(hist, axis=0, out=cum[1:])
        w = quadratic_weights(n_classes)
        row_totals = cum[-1]
        total = row_totals.sum()
        self.n_classes = n_classes
        self.cw = cum @ w  # (n_values + 1, K): disagreement of the first c values if predicted as class j
        self.s = cum.sum(axis=1)  # (n_values + 1,): weight of the first c values
        self.e = (w @ row_totals) / total  # (K,): expected disagreement per unit predicted as class j
        self.total = total
        self.cols = np.arange(n_classes)
        self.cw_by_class = np.ascontiguousarray(self.cw.T)  # (K, n_values + 1): a class's column as one row
        self._bounds_buffer = np.zeros(n_classes + 1, dtype=np.int64)  # [0, cuts..., n_values], filled per call
        self._bounds_buffer[-1] = n_values

    def cuts_of(self, thresholds: np.ndarray) -> np.ndarray:
        """Cut index per threshold: the number of distinct values strictly below it."""
        return np.searchsorted(self.values, thresholds, side="left")

    def _bounds(self, cuts: np.ndarray) -> np.ndarray:
        """[0, cuts..., n_values] in a buffer reused by every call (the search calls this ~10^5 times a fit)."""
        b = self._bounds_buffer
        b[1:-1] = cuts
        return b

    def score(self, cuts: np.ndarray) -> float:
        b = self._bounds(cuts)
        upper, lower = b[1:], b[:-1]
        num = float((self.cw[upper, self.cols] - self.cw[lower, self.cols]).sum())
        den = float(((self.s[upper] - self.s[lower]) * self.e).sum())
        return 0.0 if den <= _IMPROVEMENT * self.total else 1.0 - num / den

    def best_move(self, cuts: np.ndarray, k: int) -> tuple[int, float]:
        """Best position of cut k between its neighbours, evaluated for every candidate at once."""
        b = self._bounds(cuts)
        lo, hi = b[k], b[k + 2]  # class k spans [lo, c), class k + 1 spans [c, hi)
        cols = self.cols
        seg_num = self.cw[b[1:], cols] - self.cw[b[:-1], cols]
        seg_den = (self.s[b[1:]] - self.s[b[:-1]]) * self.e
        other_num = seg_num.sum() - seg_num[k] - seg_num[k + 1]
        other_den = seg_den.sum() - seg_den[k] - seg_den[k + 1]
        c = np.arange(lo, hi + 1)
        this, after = self.cw_by_class[k], self.cw_by_class[k + 1]
        num = other_num + (this[c] - this[lo]) + (after[hi] - after[c])
        den = other_den + (self.s[c] - self.s[lo]) * self.e[k] + (self.s[hi] - self.s[c]) * self.e[k + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.where(den > _IMPROVEMENT * self.total, 1.0 - num / den, 0.0)
        best = int(np.argmax(kappa))
        return int(c[best]), float(kappa[best])

    def thresholds_of(self, cuts: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Strictly increasing threshold values realising `cuts`, keeping `previous` values that still fit.

        Cut c is realised by any t in (values[c-1], values[c]]; a threshold whose cut moved goes to the
        middle of its gap, and thresholds that share a gap are spread evenly inside it.
        """
        v = self.values
        lower = np.where(cuts > 0, v[np.maximum(cuts - 1, 0)], v[0] - 1.0)
        upper = np.where(cuts < v.size, v[np.minimum(cuts, v.size - 1)], v[-1] + 1.0)
        keep = (previous > lower) & (previous <= upper)
        middle = (lower + upper) / 2.0
        t = np.where(keep, previous, np.where(middle > lower, middle, upper))  # adjacent floats: no middle
        if np.all(np.diff(t) > 0):
            return t
        for cut in np.unique(cuts):
            same = np.flatnonzero(cuts == cut)
            if same.size == 1:
                continue
            lo, hi = lower[same[0]], upper[same[0]]
            t[same] = lo + (hi - lo) * np.arange(1, same.size + 1) / (same.size + 1)
        return t


class ThresholdSearcher(BaseEstimator):
    """Fit n_classes - 1 cut points on continuous predictions to maximise (weighted) QWK.

    Args:
        n_classes: number of scores (6).
        min_label: lowest score (1).
        max_passes: cap on coordinate passes over all thresholds per round.
        polish: run a Nelder-Mead polish after the coordinate search (kept only if it improves).
        max_rounds: cap on coordinate-search + polish rounds.

    Attributes after `fit`:
        thresholds_: shape (n_classes - 1,), strictly increasing float64 cut points.
        score_: in-sample QWK of the fitted thresholds.
        n_passes_: coordinate passes run.
    """

    def __init__(
        self,
        n_classes: int = N_CLASSES,
        min_label: int = MIN_LABEL,
        max_passes: int = 50,
        polish: bool = True,
        max_rounds: int = 3,
    ):
        self.n_classes = n_classes
        self.min_label = min_label
        self.max_passes = max_passes
        self.polish = polish
        self.max_rounds = max_rounds

    def initial_thresholds(self) -> np.ndarray:
        """Starting cut points: halfway between consecutive scores (1.5, 2.5, ..., 5.5)."""
        return self.min_label + 0.5 + np.arange(self.n_classes - 1, dtype=np.float64)

    def fit(self, preds: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> ThresholdSearcher:
        """Fit on continuous predictions `preds`, shape (n,), and true scores `y`, shape (n,)."""
        p = check_predictions(preds, "preds")
        labels = check_labels(y, "y", self.n_classes, self.min_label)
        check_same_length(preds=p, y=labels)
        w = check_sample_weight(sample_weight, len(p))
        problem = _SortedProblem(p, labels - self.min_label, w, self.n_classes)

        thresholds = self.initial_thresholds()
        cuts = problem.cuts_of(thresholds)
        best = problem.score(cuts)
        passes = 0
        for _ in range(self.max_rounds):
            cuts, best, used = self._coordinate_search(problem, cuts, best)
            passes += used
            thresholds = problem.thresholds_of(cuts, thresholds)
            if not self.polish:
                break
            polished, polished_score = self._polish(problem, thresholds, best)
            if polished_score <= best + _IMPROVEMENT:
                break
            thresholds, best = polished, polished_score
            cuts = problem.cuts_of(thresholds)

        self.thresholds_ = thresholds
        self.score_ = float(best)
        self.n_passes_ = passes
        logger.debug("thresholds %s, in-sample QWK %.5f after %d passes", np.round(thresholds, 4), best, passes)
        return self

    def _coordinate_search(
        self, problem: _SortedProblem, cuts: np.ndarray, best: float
    ) -> tuple[np.ndarray, float, int]:
        cuts = cuts.copy()
        for n_pass in range(1, self.max_passes + 1):
            improved = False
            for k in range(self.n_classes - 1):
                cut, score = problem.best_move(cuts, k)
                if score > best + _IMPROVEMENT:
                    cuts[k], best, improved = cut, score, True
            if not improved:
                return cuts, best, n_pass
        return cuts, best, self.max_passes

    @staticmethod
    def _polish(problem: _SortedProblem, thresholds: np.ndarray, best: float) -> tuple[np.ndarray, float]:
        def loss(t: np.ndarray) -> float:
            if (t[1:] - t[:-1] <= 0).any():  # np.diff(t) <= 0 without its per-call overhead
                return 2.0  # worse than any kappa (>= -1): keeps the simplex monotone
            return -problem.score(problem.cuts_of(t))

        result = minimize(loss, thresholds, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-9})
        candidate = np.asarray(result.x, dtype=np.float64)
        if np.any(np.diff(candidate) <= 0) or not np.all(np.isfinite(candidate)):
            return thresholds, best
        return candidate, -loss(candidate)

    def predict(self, preds: ArrayLike) -> np.ndarray:
        """Scores, shape (n,), int64 in 1..6, for continuous predictions `preds`, shape (n,)."""
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("ThresholdSearcher is not fitted yet; call fit(preds, y) first")
        return apply_thresholds(preds, self.thresholds_, self.n_classes, self.min_label)


SearcherFactory = Callable[[], Any]


class GroupThresholds(BaseEstimator):
    """One set of thresholds per group of rows (essay origin, prompt), with shared thresholds as the fallback.

    Rows of different origins can be calibrated differently (a model over-predicts the essays it saw less
    of), so each group with at least `min_rows` rows and two distinct scores gets cut points fitted on its
    own rows; every other group, and rows of groups never seen, use thresholds fitted on all rows. A group
    named "a|b" (an origin and a prompt) falls back to group "a" (fitted on all rows of "a|..."), then to the
    shared thresholds.

    Args:
        min_rows: fewest rows a group needs for its own thresholds.
        polish: passed to every `ThresholdSearcher`.

    Attributes after `fit`: `shared_` (cut points on all rows), `by_group_` ({group: cut points}).
    """

    def __init__(self, min_rows: int = 200, polish: bool = True):
        self.min_rows = min_rows
        self.polish = polish

    def fit(self, preds: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None) -> GroupThresholds:
        p = check_predictions(preds, "preds")
        labels = check_labels(y, "y")
        w = check_sample_weight(sample_weight, len(p))
        self.shared_ = [float(t) for t in ThresholdSearcher(polish=self.polish).fit(p, labels, w).thresholds_]
        self.by_group_: dict[str, list[float]] = {}
        if groups is None:
            return self
        g = np.asarray(groups).astype(str)
        parents = np.array([key.split("|", 1)[0] for key in g]) if any("|" in key for key in np.unique(g)) else None
        for key, rows in [*((k, g == k) for k in np.unique(g)),
                          *(((k, parents == k) for k in np.unique(parents)) if parents is not None else ())]:
            if rows.sum() < self.min_rows or np.unique(labels[rows]).size < 2:
                continue
            if w is not None and w[rows].sum() <= 0:
                continue
            searcher = ThresholdSearcher(polish=self.polish).fit(p[rows], labels[rows],
                                                                 None if w is None else w[rows])
            self.by_group_[str(key)] = [float(t) for t in searcher.thresholds_]
        return self

    def thresholds_for(self, group: str | None) -> list[float]:
        """The cut points rows of `group` get (the shared ones for a group without its own)."""
        if not hasattr(self, "shared_"):
            raise NotFittedError("GroupThresholds is not fitted yet; call fit(preds, y, groups) first")
        if group is None:
            return self.shared_
        group = str(group)
        return self.by_group_.get(group, self.by_group_.get(group.split("|", 1)[0], self.shared_))

    def predict(self, preds: ArrayLike, groups: ArrayLike | None = None) -> np.ndarray:
        p = check_predictions(preds, "preds")
        if groups is None:
            return apply_thresholds(p, self.thresholds_for(None))
        g = np.asarray(groups).astype(str)
        out = np.zeros(len(p), dtype=np.int64)
        for key in np.unique(g):
            rows = g == key
            out[rows] = apply_thresholds(p[rows], self.thresholds_for(key))
        return out
