"""Combining several models' OOF predictions: weighted blends, a LightGBM stacker, and honest scores.

Inputs everywhere: `P`, shape (n_rows, n_models), continuous OOF predictions on the score scale;
`y`, shape (n_rows,), true scores 1..6; `folds`, shape (n_rows,), the fold each row was held out in.

- `MeanBlender`, `GreedyBlender` (forward selection with replacement on thresholded QWK) and
  `ScipyBlender` (SLSQP on the simplex) learn non-negative weights summing to one.
- `nested_blend_qwk` scores a blender honestly: for each fold, the blend weights *and* the thresholds
  are fitted on the other folds only, and the held-out fold is scored with them. The in-sample score
  (both fitted on every row) is reported beside it so the optimism of the search is visible.
- `LGBMStacker` trains one booster per fold on exactly the given folds (early stopping on another
  training fold, never the held-out one), returns OOF predictions, and saves / loads as plain LightGBM
  text models plus a JSON file.
- `tune_stacker` searches LightGBM parameters with optuna on training rows only.
- `prompt_mix_weights` reweights rows so prompt clusters match a target mix when scoring.

QWK surrogate objective (objective="qwk"). For continuous predictions p, weights w (W = sum w), the
kappa of continuous scores is 1 - f / g with

    f = sum_i w_i (p_i - y_i)^2                        (observed quadratic disagreement)
    g = sum_i w_i ((p_i - ybar)^2 + s2)                (expected disagreement if p and y were independent:
                                                        (1/W) sum_ij w_i w_j (p_i - y_j)^2)

with ybar, s2 the weighted mean and variance of y. The loss minimised is W * f / g (scaled by W so
per-row gradients are O(1), like L2). Per row, with L = f / g:

    grad_i = W * 2 w_i ((p_i - y_i) - L (p_i - ybar)) / g
    hess_i = W * (2 w_i (1 - L) / g - 4 w_i (p_i - ybar) grad_i / (W g))      (exact diagonal)

The exact diagonal is ~0 at the constant start (L = 1), so LightGBM gets it floored at half the
Gauss-Newton curvature 2 w_i W / g.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from common.io import atomic_write
from common.metrics import check_labels, check_same_length, check_sample_weight, qwk
from common.thresholds import ThresholdSearcher, check_folds, round_scores

logger = logging.getLogger(__name__)

Objective = Literal["regression", "qwk"]


def check_prediction_matrix(P: ArrayLike, name: str = "P") -> np.ndarray:
    """Return OOF predictions as a finite float64 array of shape (n_rows, n_models)."""
    arr = np.asarray(P, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        hint = "; reshape a single model's predictions to (n_rows, 1)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must have shape (n_rows, n_models), got {arr.shape}{hint}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite predictions "
                         f"(first at row {row}, model column {col}); fix or drop them before blending")
    return arr


def prompt_mix_weights(clusters: ArrayLike, target_mix: Mapping[str, float]) -> np.ndarray:
    """Row weights, shape (n,), that make the weighted share of each cluster equal `target_mix`.

    Clusters are matched by `str(cluster)`; the mix is normalised to sum to one; a cluster absent from
    `target_mix` gets weight 0. Weights sum to n, so unweighted and weighted totals are comparable.
    """
    c = np.asarray(clusters).astype(str)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"clusters must be a non-empty 1-D array, got shape {c.shape}")
    shares = {str(k): float(v) for k, v in target_mix.items()}
    if any(not np.isfinite(v) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"target_mix must hold non-negative shares with a positive sum, got {shares}")
    present, counts = np.unique(c, return_counts=True)
    count_of = dict(zip(present.tolist(), counts.tolist(), strict=True))
    missing = sorted(k for k, v in shares.items() if v > 0 and k not in count_of)
    if missing:
        raise ValueError(f"target_mix names clusters with no rows: {missing}; present clusters: {present.tolist()}")
    total_share = sum(shares.values())
    per_row = {k: shares.get(k, 0.0) / total_share * c.size / n for k, n in count_of.items()}
    return np.array([per_row[k] for k in c], dtype=np.float64)


def _check_blend_inputs(
    P: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    matrix = check_prediction_matrix(P)
    labels = check_labels(y, "y")
    check_same_length(P=matrix, y=labels)
    return matrix, labels, check_sample_weight(sample_weight, len(labels))


class _WeightedBlend(BaseEstimator):
    """Shared `predict` of blenders that end with `weights_`, shape (n_models,)."""

    def predict(self, P: ArrayLike) -> np.ndarray:
        """Blended continuous predictions, shape (n_rows,), `P @ weights_`."""
        if not hasattr(self, "weights_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(P, y) first")
        matrix = check_prediction_matrix(P)
        if matrix.shape[1] != self.weights_.size:
            raise ValueError(f"P has {matrix.shape[1]} model columns, the blender was fitted on {self.weights_.size}")
        return matrix @ self.weights_


class MeanBlender(_WeightedBlend):
    """Plain mean of the models: the baseline every other blender must beat."""

    def fit(self, P: ArrayLike, y: ArrayLike | None = None, sample_weight: ArrayLike | None = None) -> MeanBlender:
        """Set `weights_` to 1 / n_models; `y` and `sample_weight` are ignored."""
        matrix = check_prediction_matrix(P)
        self.weights_ = np.full(matrix.shape[1], 1.0 / matrix.shape[1])
        return self


class GreedyBlender(_WeightedBlend):
    """Greedy forward selection with replacement (Caruana et al.) on QWK.

    Starts from the best single model and repeatedly adds the model (possibly one already chosen) whose
    addition to the running average maximises the score, until `patience` + 1 additions in a row fail
    to beat the best score by more than `tol`, or `max_iter` additions were made; the selection is then
    cut back to its best prefix. Weights are selection counts / total: non-negative, summing to one.

    Args:
        max_iter: cap on additions after the first model.
        metric: "thresholded" (QWK after a coordinate-search threshold fit on the same rows) or
            "rounded" (QWK of clip(rint(blend))).
        tol: minimal score gain that counts as an improvement.
        patience: non-improving additions tolerated before stopping (0: stop at the first one).

    Attributes after `fit`: `weights_` (n_models,), `counts_` (n_models,), `history_` (score after each
    selection), `score_` (final in-sample score).
    """

    def __init__(self, max_iter: int = 100, metric: Literal["thresholded", "rounded"] = "thresholded",
                 tol: float = 1e-6, patience: int = 0):
        self.max_iter = max_iter
        self.metric = metric
        self.tol = tol
        self.patience = patience

    def _score(self, blend: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
        if self.metric == "thresholded":
            return ThresholdSearcher(polish=False).fit(blend, y, sample_weight=w).score_
        return qwk(y, round_scores(blend), sample_weight=w)

    def fit(self, P: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> GreedyBlender:
        """Select models on `P`, shape (n_rows, n_models), against scores `y`, shape (n_rows,)."""
        if self.metric not in ("thresholded", "rounded"):
            raise ValueError(f"metric must be 'thresholded' or 'rounded', got {self.metric!r}")
        matrix, labels, w = _check_blend_inputs(P, y, sample_weight)
        n_models = matrix.shape[1]
        singles = [self._score(matrix[:, j], labels, w) for j in range(n_models)]
        first = int(np.argmax(singles))
        chosen = [first]
        running = matrix[:, first].copy()
        history = [singles[first]]
        best_len, stalled = 1, 0
        for _ in range(self.max_iter):
            scores = [self._score((running + matrix[:, j]) / (len(chosen) + 1), labels, w) for j in range(n_models)]
            pick = int(np.argmax(scores))
            chosen.append(pick)
            running += matrix[:, pick]
            history.append(scores[pick])
            if scores[pick] > history[best_len - 1] + self.tol:
                best_len, stalled = len(chosen), 0
            else:
                stalled += 1
                if stalled > self.patience:
                    break
        counts = np.bincount(chosen[:best_len], minlength=n_models)
        self.counts_ = counts
        self.weights_ = counts / counts.sum()
        self.history_ = history[:best_len]
        self.score_ = history[best_len - 1]
        logger.debug("greedy blend: %d selections, score %.5f, weights %s",
                     counts.sum(), self.score_, np.round(self.weights_, 3))
        return self


def _surrogate_terms(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loss f / g, gradient and exact diagonal Hessian of W f / g, and the Gauss-Newton curvature."""
    weights = np.ones_like(p) if w is None else w
    total = weights.sum()
    ybar = (weights * y).sum() / total
    s2 = (weights * (y - ybar) ** 2).sum() / total
    f = (weights * (p - y) ** 2).sum()
    g = (weights * ((p - ybar) ** 2 + s2)).sum()
    if g <= 0:
        raise ValueError("QWK surrogate is undefined: labels are constant and predictions equal them")
    loss = f / g
    grad = total * 2.0 * weights * ((p - y) - loss * (p - ybar)) / g
    hess = total * (2.0 * weights * (1.0 - loss) / g - 4.0 * weights * (p - ybar) * grad / (total * g))
    return float(loss), grad, hess, 2.0 * weights * total / g


def qwk_surrogate(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Differentiable QWK loss 1 - kappa_continuous, its gradient and exact diagonal Hessian w.r.t. p.

    Args:
        y: true scores, shape (n,) (any real values).
        p: continuous predictions, shape (n,).
        sample_weight: optional row weights, shape (n,).

    Returns:
        (loss, grad, hess): loss = f / g (see the module docstring); grad and hess, shape (n,), are the
        derivatives of W * f / g (W = sum of weights), scaled so that each row's gradient is O(1).
    """
    yv = np.asarray(y, dtype=np.float64)
    pv = np.asarray(p, dtype=np.float64)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    loss, grad, hess, _ = _surrogate_terms(yv, pv, w)
    return loss, grad, hess


def _lgb_weights(data: lgb.Dataset) -> np.ndarray | None:
    weights = data.get_weight()
    return None if weights is None else np.asarray(weights, dtype=np.float64)


def qwk_objective(preds: np.ndarray, train_data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM custom objective: QWK-surrogate gradient; exact Hessian floored at half Gauss-Newton."""
    y = np.asarray(train_data.get_label(), dtype=np.float64)
    _, grad, hess, gauss_newton = _surrogate_terms(y, np.asarray(preds, dtype=np.float64), _lgb_weights(train_data))
    return grad, np.maximum(hess, 0.5 * gauss_newton)


def _qwk_surrogate_eval(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    loss, _, _ = qwk_surrogate(data.get_label(), preds, _lgb_weights(data))
    return "qwk_surrogate", loss, False


@dataclass
class NestedBlend:
    """Held-out blend of every row, built fold by fold without the held-out labels.

    Attributes:
        blended: continuous held-out blend, shape (n,).
        scores: held-out thresholded scores 1..6, shape (n,).
        weights_per_fold: `{str(fold): blend weights fitted on the other folds}`.
        thresholds_per_fold: `{str(fold): thresholds fitted on the other folds' blend}`.
    """

    blended: np.ndarray
    scores: np.ndarray
    weights_per_fold: dict[str, list[float]]
    thresholds_per_fold: dict[str, list[float]]


def nested_blend_predictions(
    P: ArrayLike,
    y: ArrayLike,
    folds: ArrayLike,
    blender_factory: Callable[[], Any] = GreedyBlender,
    sample_weight: ArrayLike | None = None,
    searcher_factory: Callable[[], Any] = ThresholdSearcher,
) -> NestedBlend:
    """For each fold f: fit the blender and then the thresholds on the other folds, score fold f."""
    matrix, labels, w = _check_blend_inputs(P, y, sample_weight)
    f = check_folds(folds, len(labels))
    blended = np.zeros(len(labels))
    scores = np.zeros(len(labels), dtype=np.int64)
    weights_per_fold: dict[str, list[float]] = {}
    thresholds_per_fold: dict[str, list[float]] = {}
    for fold in np.unique(f):
        train, held = f != fold, f == fold
        w_train = None if w is None else w[train]
        blender = blender_factory().fit(matrix[train], labels[train], sample_weight=w_train)
        searcher = searcher_factory().fit(blender.predict(matrix[train]), labels[train], sample_weight=w_train)
        blended[held] = blender.predict(matrix[held])
        scores[held] = searcher.predict(blended[held])
        weights_per_fold[str(fold)] = [float(v) for v in blender.weights_]
        thresholds_per_fold[str(fold)] = [float(t) for t in searcher.thresholds_]
    return NestedBlend(blended, scores, weights_per_fold, thresholds_per_fold)


def nested_blend_qwk(
    P: ArrayLike,
    y: ArrayLike,
    folds: ArrayLike,
    blender_factory: Callable[[], Any] = GreedyBlender,
    sample_weight: ArrayLike | None = None,
    searcher_factory: Callable[[], Any] = ThresholdSearcher,
) -> dict[str, Any]:
    """Honest and in-sample QWK of a blender + thresholds, JSON-serialisable.

    Args:
        P: OOF predictions, shape (n_rows, n_models).
        y: true scores 1..6, shape (n_rows,).
        folds: fold id per row, shape (n_rows,).
        blender_factory: zero-argument callable returning an unfitted blender (fit / predict / weights_).
        sample_weight: optional row weights, shape (n_rows,), used to fit and to score.
        searcher_factory: zero-argument callable returning an unfitted threshold searcher.

    Returns:
        `qwk_nested` (held-out folds pooled), `qwk_insample` (blender and thresholds fitted and scored on
        every row), `optimism_gap` (in-sample minus nested), `per_fold`, `weights_per_fold`,
        `thresholds_per_fold`, and the all-rows `weights` and `thresholds` (what a submission would use).
    """
    matrix, labels, w = _check_blend_inputs(P, y, sample_weight)
    f = check_folds(folds, len(labels))
    nested = nested_blend_predictions(matrix, labels, f, blender_factory, w, searcher_factory)
    blender = blender_factory().fit(matrix, labels, sample_weight=w)
    blend_all = blender.predict(matrix)
    searcher = searcher_factory().fit(blend_all, labels, sample_weight=w)
    qwk_nested = qwk(labels, nested.scores, sample_weight=w)
    qwk_insample = qwk(labels, searcher.predict(blend_all), sample_weight=w)
    per_fold = {
        str(fold): qwk(labels[f == fold], nested.scores[f == fold], sample_weight=None if w is None else w[f == fold])
        for fold in np.unique(f)
    }
    logger.info("%s: nested QWK %.4f, in-sample %.4f", type(blender).__name__, qwk_nested, qwk_insample)
    return {
        "qwk_nested": qwk_nested,
        "qwk_insample": qwk_insample,
        "optimism_gap": qwk_insample - qwk_nested,
        "per_fold": per_fold,
        "weights_per_fold": nested.weights_per_fold,
        "thresholds_per_fold": nested.thresholds_per_fold,
        "weights": [float(v) for v in blender.weights_],
        "thresholds": [float(t) for t in searcher.thresholds_],
    }


class ScipyBlender(_WeightedBlend):
    """Weights on the simplex (non-negative, sum 1) fitted with SLSQP.

    Args:
        loss: "mse" (weighted mean squared error to y) or "qwk" (the smooth QWK surrogate f / g of the
            module docstring, which rewards spread as well as accuracy).
        max_iter: SLSQP iteration cap.

    Attributes after `fit`: `weights_` (n_models,), `loss_` (final loss value).
    """

    def __init__(self, loss: Literal["mse", "qwk"] = "mse", max_iter: int = 200):
        self.loss = loss
        self.max_iter = max_iter

    def fit(self, P: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> ScipyBlender:
        """Fit weights on `P`, shape (n_rows, n_models), against scores `y`, shape (n_rows,)."""
        if self.loss not in ("mse", "qwk"):
            raise ValueError(f"loss must be 'mse' or 'qwk', got {self.loss!r}")
        matrix, labels, w = _check_blend_inputs(P, y, sample_weight)
        target = labels.astype(np.float64)
        rows = np.ones(len(target)) if w is None else w
        total = rows.sum()

        def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
            blend = matrix @ beta
            if self.loss == "mse":
                resid = blend - target
                return float((rows * resid**2).sum() / total), matrix.T @ (2.0 * rows * resid) / total
            loss, grad, _ = qwk_surrogate(target, blend, rows)
            return loss, matrix.T @ grad / total

        n_models = matrix.shape[1]
        result = minimize(
            objective,
            np.full(n_models, 1.0 / n_models),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n_models,
            constraints=[{"type": "eq", "fun": lambda b: b.sum() - 1.0, "jac": lambda b: np.ones_like(b)}],
            options={"maxiter": self.max_iter, "ftol": 1e-10},
        )
        if not result.success:
            logger.warning("SLSQP did not converge (%s); keeping its last weights", result.message)
        beta = np.clip(result.x, 0.0, None)
        self.weights_ = beta / beta.sum()
        self.loss_ = float(objective(self.weights_)[0])
        return self


DEFAULT_LGB_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
}


FoldCallback = Callable[[int, int, np.ndarray, np.ndarray], None]


class LGBMStacker:
    """LightGBM on OOF predictions (+ extra features), one booster per outer fold.

    For each fold f, the booster is trained on the rows of the folds other than f and g, and early-stopped
    on fold g, the fold after f in sorted order (cyclically); fold f is never seen. So at least three
    folds are needed, and the validation split respects the fold grouping (e.g. by prompt).

    Args:
        objective: "regression" (L2) or "qwk" (the QWK surrogate of the module docstring).
        params: LightGBM parameters overriding `DEFAULT_LGB_PARAMS` (e.g. `tune_stacker`'s result).
        n_estimators: boosting round cap.
        early_stopping_rounds: patience on the inner validation fold.
        seed: seeds LightGBM (with deterministic=True and a fixed thread count results are reproducible).
        num_threads: LightGBM threads. One is the default: results do not depend on it, and on stacker-sized
            data (17k rows x tens of features) extra OpenMP threads were 3-5x slower on a busy 2-core box.

    Attributes after `fit_oof` (or `load`): `models_` ({fold: Booster}), `base_scores_` ({fold: float},
    the weighted mean label each booster starts from), `best_iterations_`, `feature_names_`, `oof_`.
    """

    MODEL_FILE = "fold_{fold}.txt"
    META_FILE = "stacker.json"

    def __init__(self, objective: Objective = "regression", params: Mapping[str, Any] | None = None,
                 n_estimators: int = 2000, early_stopping_rounds: int = 100, seed: int = 0, num_threads: int = 1):
        if objective not in ("regression", "qwk"):
            raise ValueError(f"objective must be 'regression' or 'qwk', got {objective!r}")
        self.objective = objective
        self.params = dict(params or {})
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.num_threads = num_threads

    def feature_importance(self) -> dict[str, float]:
        """Share of the total split gain of every feature, summed over the fold boosters, largest first."""
        if not getattr(self, "models_", None):
            raise RuntimeError("LGBMStacker: call fit_oof or load first")
        gain = sum(np.asarray(b.feature_importance(importance_type="gain"), dtype=float) for b in self.models_.values())
        total = float(gain.sum()) or 1.0
        order = np.argsort(-gain, kind="stable")
        return {self.feature_names_[i]: float(gain[i] / total) for i in order}

    def lgb_params(self) -> dict[str, Any]:
        """The full LightGBM parameter dict used for training."""
        params = {**DEFAULT_LGB_PARAMS, **self.params}
        params.update(
            objective=qwk_objective if self.objective == "qwk" else "regression",
            metric="None" if self.objective == "qwk" else "l2",
            seed=self.seed,
            deterministic=True,
            force_row_wise=True,
            num_threads=self.num_threads,
            verbosity=-1,
        )
        return params

    def _frame(self, X: pd.DataFrame | ArrayLike, fitting: bool) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            frame = X
        else:
            arr = np.asarray(X, dtype=np.float64)
            if arr.ndim != 2:
                raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {arr.shape}")
            names = [f"f{i}" for i in range(arr.shape[1])] if fitting else list(self.feature_names_)
            if len(names) != arr.shape[1]:
                raise ValueError(f"X has {arr.shape[1]} columns, the stacker was fitted on {len(names)}")
            frame = pd.DataFrame(arr, columns=names)
        if not fitting:
            missing = [c for c in self.feature_names_ if c not in frame.columns]
            if missing:
                raise ValueError(f"X lacks feature columns the stacker was fitted on: {missing}")
            frame = frame[list(self.feature_names_)]
        non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            raise ValueError(f"X columns must be numeric, these are not: {non_numeric}")
        return frame.astype(np.float64)

    def fit_oof(
        self,
        X: pd.DataFrame | ArrayLike,
        y: ArrayLike,
        folds: ArrayLike,
        sample_weight: ArrayLike | None = None,
        on_fold: FoldCallback | None = None,
    ) -> np.ndarray:
        """Train one booster per fold and return OOF predictions, shape (n_rows,).

        Args:
            X: features, shape (n_rows, n_features) (DataFrame column names are kept); NaN allowed.
            y: true scores 1..6, shape (n_rows,).
            folds: fold id per row, shape (n_rows,), at least three folds.
            sample_weight: optional training/validation row weights, shape (n_rows,).
            on_fold: called after each fold as on_fold(step, fold, held_out_rows, held_out_preds); it may
                raise to stop training (tune_stacker prunes trials this way).
        """
        frame = self._frame(X, fitting=True)
        labels = check_labels(y, "y")
        check_same_length(X=frame, y=labels)
        f = check_folds(folds, len(labels))
        w = check_sample_weight(sample_weight, len(labels))
        fold_ids = np.unique(f)
        if fold_ids.size < 3:
            raise ValueError(f"LGBMStacker needs at least 3 folds (one held out, one for early stopping), "
                             f"got {fold_ids.tolist()}")
        self.feature_names_ = [str(c) for c in frame.columns]
        self.models_: dict[int, lgb.Booster] = {}
        self.base_scores_: dict[int, float] = {}
        self.best_iterations_: dict[int, int] = {}
        oof = np.zeros(len(labels))
        values = frame.to_numpy()
        for step, fold in enumerate(fold_ids):
            valid_fold = fold_ids[(step + 1) % fold_ids.size]
            train = (f != fold) & (f != valid_fold)
            valid = f == valid_fold
            held = np.flatnonzero(f == fold)
            booster, base = self._train_one(values, labels, w, train, valid)
            fold_key = int(fold)
            self.models_[fold_key] = booster
            self.base_scores_[fold_key] = base
            self.best_iterations_[fold_key] = int(booster.best_iteration or booster.current_iteration())
            oof[held] = self._predict_one(fold_key, values[held])
            logger.info("stacker fold %d: %d rounds (early-stopped on fold %d)",
                        fold_key, self.best_iterations_[fold_key], int(valid_fold))
            if on_fold is not None:
                on_fold(step, fold_key, held, oof[held])
        self.oof_ = oof
        return oof

    def _train_one(
        self, values: np.ndarray, labels: np.ndarray, w: np.ndarray | None, train: np.ndarray, valid: np.ndarray
    ) -> tuple[lgb.Booster, float]:
        y_train = labels[train].astype(np.float64)
        w_train = None if w is None else w[train]
        base = float(np.average(y_train, weights=w_train))
        train_set = lgb.Dataset(values[train], y_train, weight=w_train, init_score=np.full(train.sum(), base),
                                feature_name=self.feature_names_, free_raw_data=True)
        valid_set = lgb.Dataset(values[valid], labels[valid].astype(np.float64),
                                weight=None if w is None else w[valid], init_score=np.full(valid.sum(), base),
                                reference=train_set)
        booster = lgb.train(
            self.lgb_params(),
            train_set,
            num_boost_round=self.n_estimators,
            valid_sets=[valid_set],
            valid_names=["inner_valid"],
            feval=_qwk_surrogate_eval if self.objective == "qwk" else None,
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        return booster, base

    def _predict_one(self, fold: int, values: np.ndarray) -> np.ndarray:
        raw = self.models_[fold].predict(values, num_iteration=self.best_iterations_[fold])
        return np.asarray(raw, dtype=np.float64) + self.base_scores_[fold]

    def predict(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Mean of the fold boosters' predictions for new rows, shape (n_rows,), on the score scale."""
        if not hasattr(self, "models_"):
            raise NotFittedError("LGBMStacker is not fitted yet; call fit_oof(X, y, folds) or load(dir)")
        values = self._frame(X, fitting=False).to_numpy()
        return np.mean([self._predict_one(fold, values) for fold in sorted(self.models_)], axis=0)

    def save(self, directory: str | Path) -> None:
        """Write each booster as a LightGBM text model plus `stacker.json` (features, objective, bases)."""
        if not hasattr(self, "models_"):
            raise NotFittedError("LGBMStacker is not fitted yet; nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        for fold, booster in sorted(self.models_.items()):
            name = self.MODEL_FILE.format(fold=fold)
            with atomic_write(directory / name) as tmp:
                booster.save_model(tmp, num_iteration=self.best_iterations_[fold])
            files[str(fold)] = name
        meta = {
            "objective": self.objective,
            "feature_names": self.feature_names_,
            "model_files": files,
            "base_scores": {str(k): v for k, v in self.base_scores_.items()},
            "best_iterations": {str(k): v for k, v in self.best_iterations_.items()},
            "params": self.params,
            "seed": self.seed,
            "num_threads": self.num_threads,
        }
        with atomic_write(directory / self.META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> LGBMStacker:
        """Restore a stacker written by `save`, ready to `predict` (no training state needed)."""
        directory = Path(directory)
        meta_path = directory / cls.META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found; save a fitted LGBMStacker there first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        stacker = cls(objective=meta["objective"], params=meta["params"], seed=int(meta["seed"]),
                      num_threads=int(meta["num_threads"]))
        stacker.feature_names_ = list(meta["feature_names"])
        stacker.models_ = {int(k): lgb.Booster(model_file=str(directory / v)) for k, v in meta["model_files"].items()}
        stacker.base_scores_ = {int(k): float(v) for k, v in meta["base_scores"].items()}
        stacker.best_iterations_ = {int(k): int(v) for k, v in meta["best_iterations"].items()}
        return stacker


def _suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 4, 63, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
    }


def tune_stacker(
    X: pd.DataFrame | ArrayLike,
    y: ArrayLike,
    folds: ArrayLike,
    n_trials: int = 20,
    seed: int = 0,
    objective: Objective = "regression",
    sample_weight: ArrayLike | None = None,
    score: Literal["rounded", "thresholded"] = "rounded",
    n_estimators: int = 300,
    early_stopping_rounds: int = 30,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Search LightGBM parameters for `LGBMStacker` with optuna (seeded TPE, median pruning).

    Every row passed in is a *training* row: the trial value is the QWK of inner-CV predictions over
    `folds`, so tuning must never see the rows it will be judged on. Call it once per outer fold with
    that fold's training rows (nested CV), or on the training folds only, never on all OOF rows before
    reporting a CV score on them.

    Args:
        X, y, folds, sample_weight: training rows only, as for `LGBMStacker.fit_oof` (>= 3 folds).
        n_trials: optuna trials.
        seed: seeds the TPE sampler and LightGBM.
        objective: stacker objective, "regression" or "qwk".
        score: "rounded" (QWK of clip(rint)) or "thresholded" (QWK after thresholds fitted on the inner
            OOF predictions, slightly optimistic but equally so for every trial).
        n_estimators, early_stopping_rounds: kept small so a trial takes seconds.

    Returns:
        The best parameters, a plain dict to pass as `LGBMStacker(params=...)`.
    """
    if score not in ("rounded", "thresholded"):
        raise ValueError(f"score must be 'rounded' or 'thresholded', got {score!r}")
    labels = check_labels(y, "y")
    w = check_sample_weight(sample_weight, len(labels))

    def trial_value(trial: optuna.Trial) -> float:
        stacker = LGBMStacker(objective=objective, params=_suggest_params(trial), n_estimators=n_estimators,
                              early_stopping_rounds=early_stopping_rounds, seed=seed, num_threads=num_threads)
        done = np.zeros(len(labels), dtype=bool)
        preds = np.zeros(len(labels))

        def report(step: int, fold: int, rows: np.ndarray, held_preds: np.ndarray) -> None:
            done[rows] = True
            preds[rows] = held_preds
            trial.report(qwk(labels[done], round_scores(preds[done]),
                             sample_weight=None if w is None else w[done]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold}")

        oof = stacker.fit_oof(X, labels, folds, sample_weight=w, on_fold=report)
        if score == "thresholded":
            scores = ThresholdSearcher(polish=False).fit(oof, labels, sample_weight=w).predict(oof)
        else:
            scores = round_scores(oof)
        return qwk(labels, scores, sample_weight=w)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(trial_value, n_trials=n_trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    logger.info("tune_stacker: best inner-CV QWK %.4f over %d trials (%d pruned): %s",
                study.best_value, len(study.trials), pruned, study.best_params)
    return dict(study.best_params)
