"""How sure a nested QWK is: bootstrap intervals and paired differences, essays resampled within folds.

Every held-out score of a fold was made by a fit on the other folds, so a resample keeps each fold's
size: it draws, fold by fold, as many essays (with replacement) as the fold holds. One draw is shared by
every method and model, so the difference between two of them is measured on the same essays (paired):
two highly correlated ensembles differ by far less noise than either interval suggests.

A draw is a row of counts; a score's confusion matrix on every draw at once is `counts @ onehot(cell)`,
so 1,000 draws of 17k essays cost one (1000 x n) @ (n x 36) product per score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.scoring.metrics import MIN_LABEL, N_CLASSES, check_labels, quadratic_weights, qwk

DEFAULT_DRAWS = 1000
DEFAULT_LEVEL = 0.9


def draw_counts(folds: ArrayLike, n_draws: int, seed: int) -> np.ndarray:
    """How often each row is drawn in each bootstrap resample, shape (n_draws, n); within-fold totals kept."""
    f = np.asarray(folds)
    counts = np.zeros((n_draws, f.size), dtype=np.float64)
    rng = np.random.default_rng(seed)
    for fold in np.unique(f):
        rows = np.flatnonzero(f == fold)
        counts[:, rows] = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size), size=n_draws)
    return counts


def _qwk_per_draw(y0: np.ndarray, s0: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """QWK of scores s0 against y0 (both 0-based) under every row of `weights` (n_draws, n)."""
    k = N_CLASSES
    onehot = np.zeros((y0.size, k * k))
    onehot[np.arange(y0.size), y0 * k + s0] = 1.0
    observed = (weights @ onehot).reshape(-1, k, k)
    total = observed.sum(axis=(1, 2))
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / np.maximum(total, 1e-12)[:, None,
                                                                                                               None]
    w = quadratic_weights(k)
    den = (w * expected).sum(axis=(1, 2))
    num = (w * observed).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 1e-12 * np.maximum(total, 1e-12), 1.0 - num / den, 0.0)


@dataclass
class Bootstrap:
    """Per-draw QWK of several named held-out scorings of the same rows (one shared set of draws).

    Attributes:
        point: {name: QWK on the rows as they are}.
        draws: {name: QWK on each resample, shape (n_draws,)}.
        level: two-sided interval level.
    """

    point: dict[str, float]
    draws: dict[str, np.ndarray]
    level: float

    def _bounds(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2.0
        return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval of a name's QWK."""
        return self._bounds(self.draws[name])

    def difference(self, a: str, b: str) -> dict[str, float]:
        """QWK(a) - QWK(b), paired over the same draws: the point difference and its interval."""
        low, high = self._bounds(self.draws[a] - self.draws[b])
        return {"diff": self.point[a] - self.point[b], "low": low, "high": high}

    def summary(self, name: str) -> dict[str, float]:
        low, high = self.interval(name)
        return {"qwk": self.point[name], "low": low, "high": high}


def bootstrap_qwk(y: ArrayLike, scores: Mapping[str, ArrayLike], folds: ArrayLike, rows: ArrayLike | None = None,
                  sample_weight: ArrayLike | None = None, n_draws: int = DEFAULT_DRAWS, level: float = DEFAULT_LEVEL,
                  seed: int = 0) -> Bootstrap:
    """Bootstrap the QWK of every scoring in `scores` on the same resamples of `rows`.

    Args:
        y: true scores 1..6, shape (n,).
        scores: {name: held-out integer scores 1..6, shape (n,)}.
        folds: fold id per row, shape (n,): essays are resampled within their fold.
        rows: boolean mask of the rows scored (e.g. other-origin rows); None: every row.
        sample_weight: row weights the QWK is taken under (e.g. a prompt mix), shape (n,).
        n_draws: bootstrap resamples; level: two-sided interval level; seed: seeds the draws.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    labels = check_labels(y, "y")
    mask = np.ones(labels.size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    f = np.asarray(folds)[mask]
    counts = draw_counts(f, n_draws, seed)
    if sample_weight is not None:
        counts = counts * np.asarray(sample_weight, dtype=np.float64)[mask]
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[mask]
    y0 = labels[mask] - MIN_LABEL
    point, draws = {}, {}
    for name, values in scores.items():
        s = check_labels(values, f"scores[{name!r}]")
        point[name] = qwk(labels[mask], s[mask], sample_weight=weight)
        draws[name] = _qwk_per_draw(y0, s[mask] - MIN_LABEL, counts)
    return Bootstrap(point, draws, level)
