"""Nested (held-out) evaluation: a chain fitted on the other folds predicts each fold, never seeing its labels.

A chain is an optional combiner (a blend of the models' predictions or the LightGBM stacker, see
`common.scoring.combiner.Combiner`) followed by thresholds. Without a combiner, X is one model's continuous predictions
and the chain is thresholds alone. `Chain.fit(train)` fits it on the rows of a boolean mask -- the combiner
first, then the thresholds on the combiner's predictions of those rows (in-sample for a blend, out-of-fold
for the stacker) -- and `Chain.nested()` does that for every fold with the others, pooling the held-out
predictions. Input is checked once, when the chain is made; fits are cached by rows and weights, so a fit
asked for again (the same fold at the same weights, e.g. by a weight search) is reused, not redone.

Shapes: X (n,) without a combiner, else (n, n_models) predictions or (n, n_features) stacker features; y,
folds, groups and weights (n,).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from common.scoring.metrics import check_labels, check_predictions, check_sample_weight, qwk

if TYPE_CHECKING:
    from common.scoring.combiner import Combiner

Weights = np.ndarray | None
RowWeights = Weights | Callable[[np.ndarray], Weights]
"""Row weights of every row, shape (n,), or a function of the training rows' mask that returns them (chosen from
those rows alone), or None (unweighted)."""


def check_folds(folds: ArrayLike, n_rows: int) -> np.ndarray:
    """Return fold ids as a 1-D int64 array of length `n_rows`; raise ValueError unless there are >= 2."""
    arr = np.asarray(folds)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise ValueError(f"folds must have shape ({n_rows},), got {arr.shape}; give one fold id per row")
    whole_floats = (np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr)))
                    and bool(np.all(arr == np.round(arr))))
    if not (np.issubdtype(arr.dtype, np.integer) or whole_floats):
        raise ValueError(f"folds must hold integer fold ids, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if np.unique(out).size < 2:
        raise ValueError("folds must hold at least two distinct fold ids for a held-out estimate")
    return out


@dataclass
class FittedChain:
    """A chain fitted on some rows: the combiner (None: thresholds alone), the thresholds, and the continuous
    predictions of the training rows the thresholds were fitted on, shape (n_train,)."""

    combiner: Combiner | None
    thresholds: Any
    train_pred: np.ndarray


@dataclass
class Nested:
    """Held-out predictions of the rows a nested run covered (zeros elsewhere).

    Attributes:
        pred: continuous held-out prediction per row, shape (n,).
        scores: held-out thresholded scores 1..6, shape (n,), int64.
        fits: {str(fold): the chain fitted on the other folds}.
    """

    pred: np.ndarray
    scores: np.ndarray
    fits: dict[str, FittedChain]


class Chain:
    """An optional combiner and thresholds, fitted on some rows and predicting others.

    Args:
        X: the chain's input for every row (see the module docstring).
        y: true scores 1..6, shape (n,).
        folds: fold id per row, shape (n,).
        thresholds: zero-argument callable returning unfitted thresholds (`ThresholdSearcher`, `GroupThresholds`).
        combiner: function of the training rows' mask returning an unfitted combiner for them (fresh each call);
            None: X is one model's predictions, thresholded as they are.
        groups: group of every row (essay origin) for thresholds fitted per group, or None.
    """

    def __init__(self, X: Any, y: ArrayLike, folds: ArrayLike, thresholds: Callable[[], Any],
                 combiner: Callable[[np.ndarray], Combiner] | None = None, groups: ArrayLike | None = None):
        self.y = check_labels(y, "y")
        n = self.y.size
        self.folds = check_folds(folds, n)
        if combiner is None:
            X = check_predictions(X, "preds")
        if len(X) != n:
            raise ValueError(f"length mismatch: X has {len(X)} rows, y has {n}")
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and self.groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {self.groups.shape}")
        self.X, self.thresholds, self.combiner = X, thresholds, combiner
        self._fits: dict[tuple[bytes, bytes | None], FittedChain] = {}

    def fit(self, train: np.ndarray, sample_weight: Weights = None) -> FittedChain:
        """The chain fitted on the rows of the mask `train`, weighted by `sample_weight[train]` (cached)."""
        w = None if sample_weight is None else check_sample_weight(sample_weight, self.y.size)
        key = (train.tobytes(), None if w is None else w.tobytes())
        if key not in self._fits:
            w_train = None if w is None else w[train]
            combiner = None
            if self.combiner is None:
                pred = self.X[train]
            else:
                combiner = self.combiner(train).fit(self.X[train], self.y[train], sample_weight=w_train,
                                                    folds=self.folds[train])
                pred = combiner.fit_pred_
            groups = () if self.groups is None else (self.groups[train],)
            thresholds = self.thresholds().fit(pred, self.y[train], *groups, sample_weight=w_train)
            self._fits[key] = FittedChain(combiner, thresholds, pred)
        return self._fits[key]

    def predict(self, fitted: FittedChain, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(continuous, scores) of the rows of the mask `rows` by a fitted chain."""
        cont = self.X[rows] if fitted.combiner is None else fitted.combiner.predict(self.X[rows])
        return cont, self.score(fitted, cont, rows)

    def score(self, fitted: FittedChain, cont: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores 1..6 of continuous predictions `cont` of the rows of the mask `rows` by the fitted thresholds."""
        groups = () if self.groups is None else (self.groups[rows],)
        return fitted.thresholds.predict(cont, *groups)

    def nested(self, sample_weight: RowWeights = None, within: np.ndarray | None = None) -> Nested:
        """Held-out predictions of the rows in `within` (all rows by default), fold by fold: fold f is predicted by
        the chain fitted on the other folds of `within` only, under `sample_weight` (a function of those rows'
        mask: weights chosen from them alone)."""
        within = np.ones(self.y.size, dtype=bool) if within is None else within
        pred, scores, fits = np.zeros(self.y.size), np.zeros(self.y.size, dtype=np.int64), {}
        for fold in np.unique(self.folds[within]):
            held = within & (self.folds == fold)
            train = within & ~held
            w = sample_weight(train) if callable(sample_weight) else sample_weight
            fits[str(int(fold))] = self.fit(train, w)
            pred[held], scores[held] = self.predict(fits[str(int(fold))], held)
        return Nested(pred, scores, fits)


def nested_qwk(y: ArrayLike, folds: ArrayLike, nested: Nested, sample_weight: Weights = None) -> dict[str, Any]:
    """Pooled and per-fold QWK of a nested run, and its thresholds per fold, JSON-serialisable.

    Returns `qwk_nested` (every held-out score pooled), `per_fold` ({fold: QWK}) and `thresholds_per_fold`
    ({fold: cut points}, for thresholds with a single set, `thresholds_`).
    """
    labels, f = np.asarray(y), np.asarray(folds)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    per_fold = {key: qwk(labels[f == int(key)], nested.scores[f == int(key)],
                         sample_weight=None if w is None else w[f == int(key)]) for key in nested.fits}
    return {"qwk_nested": qwk(labels, nested.scores, sample_weight=w), "per_fold": per_fold,
            "thresholds_per_fold": thresholds_per_fold(nested.fits)}


def thresholds_per_fold(fits: Mapping[str, FittedChain]) -> dict[str, list[float]]:
    """{fold: the cut points fitted on the other folds} of a nested run with single-set thresholds."""
    return {key: [float(t) for t in fit.thresholds.thresholds_] for key, fit in fits.items()}
