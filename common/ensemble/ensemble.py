"""Combining several models' OOF predictions: the blends and the LightGBM stacker behind one `Combiner` interface.

Inputs everywhere: `P`, shape (n_rows, n_models), continuous OOF predictions on the score scale;
`y`, shape (n_rows,), true scores 1..6; `folds`, shape (n_rows,), the fold each row was held out in.

- `Combiner` (common.scoring.combiner, below common.scoring.nested, which fits any of them) is what every method implements:
  `fit(X, y, sample_weight, folds)` (returns self, sets `fit_pred_`, the predictions of the training rows that
  thresholds are fitted on), `predict(X)`, `tune` (parameters chosen on training rows, the stacker's optuna
  search), `save(directory)` / `load(directory, entry)` and `check` (what 05_infer verifies before any model runs). `COMBINERS`, at the end of the module, names every method, simplest
  first; adding a method is one class here and one line there.
- `MeanBlender`, `GreedyBlender` (forward selection with replacement on thresholded QWK) and
  `ScipyBlender` (SLSQP on the simplex) learn non-negative weights summing to one.
- `LGBMStacker` trains one booster per fold on exactly the given folds (early stopping on another
  training fold, never the held-out one), keeps their OOF predictions, and saves / loads as plain LightGBM
  text models plus a JSON file.
- `tune_stacker` searches LightGBM parameters with optuna on training rows only (optuna is imported there, so
  05_infer, which loads this module to predict, never loads it).
- `prompt_mix_weights` reweights rows so prompt clusters match a target mix when scoring.

Honest scores of a combiner (weights and thresholds fitted on the other folds only) come from
`common.scoring.nested.Chain`.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from lightgbm.basic import LightGBMError
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from common.core.artifact_checks import ENSEMBLE_FILE, TRUNCATED, Problems, escapes, read_json
from common.core.io import atomic_write
from common.scoring.combiner import Combiner, Objective
from common.scoring.metrics import check_labels, check_same_length, check_sample_weight, qwk
from common.scoring.nested import check_folds
from common.scoring.thresholds import ThresholdSearcher, round_scores

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

def check_prediction_matrix(P: ArrayLike, name: str = "P") -> np.ndarray:
    """Return OOF predictions as a finite, C-ordered float64 array of shape (n_rows, n_models).

    C order whatever the input (a DataFrame's values are column-major): the row sums of `P @ weights` then add up
    in the same order for an array and a frame of the same numbers.
    """
    arr = np.ascontiguousarray(P, dtype=np.float64)
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


class _WeightedBlend(Combiner):
    """Shared `predict`, saving and checking of blenders that end with `weights_`, shape (n_models,).

    Fitted on a DataFrame, a blend keeps its column names (`feature_names_in_`, the model names): it is saved as
    `{"weights": {model: weight}}` and predicts from those columns of a DataFrame in any order.
    """

    def _fitted(self, matrix: np.ndarray, P: ArrayLike, weights: np.ndarray) -> _WeightedBlend:
        self.weights_ = weights
        if isinstance(P, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in P.columns], dtype=object)
        self.fit_pred_ = matrix @ self.weights_
        return self

    def predict(self, P: ArrayLike) -> np.ndarray:
        """Blended continuous predictions, shape (n_rows,), `P @ weights_`."""
        if not hasattr(self, "weights_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(P, y) first")
        if isinstance(P, pd.DataFrame) and hasattr(self, "feature_names_in_"):
            missing = [m for m in self.feature_names_in_ if m not in P.columns]
            if missing:
                raise ValueError(f"P lacks the prediction columns of models {missing}, which the blend weighs")
            P = P[list(self.feature_names_in_)]
        matrix = check_prediction_matrix(P)
        if matrix.shape[1] != self.weights_.size:
            raise ValueError(f"P has {matrix.shape[1]} model columns, the blender was fitted on {self.weights_.size}")
        return matrix @ self.weights_

    @property
    def model_weights(self) -> dict[str, float]:
        """{model: weight} of a blend fitted on a DataFrame of named models."""
        if not hasattr(self, "feature_names_in_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted on a DataFrame of named models")
        return {str(m): float(v) for m, v in zip(self.feature_names_in_, self.weights_, strict=True)}

    def save(self, directory: Path) -> dict[str, Any]:
        """No files: the entry holds `{"weights": {model: weight}}`."""
        return {"weights": self.model_weights}

    @classmethod
    def load(cls, directory: Path, entry: Mapping[str, Any]) -> _WeightedBlend:
        blend = cls()
        blend.feature_names_in_ = np.asarray(list(entry["weights"]), dtype=object)
        blend.weights_ = np.asarray([float(v) for v in entry["weights"].values()], dtype=np.float64)
        return blend

    @classmethod
    def check(cls, directory: Path, entry: Mapping[str, Any], models: Sequence[str], problems: Problems,
              fix: str) -> None:
        weights = entry.get("weights")
        numbers = isinstance(weights, dict) and all(isinstance(v, int | float) for v in weights.values())
        if not numbers or set(models) - set(weights):
            problems.bad(directory / ENSEMBLE_FILE, f"the selected {cls.__name__} has no weight for every "
                         f"model {list(models)} (found {weights!r}): {TRUNCATED}", fix)


class MeanBlender(_WeightedBlend):
    """Plain mean of the models: the baseline every other blender must beat."""

    def fit(self, P: ArrayLike, y: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
            folds: ArrayLike | None = None) -> MeanBlender:
        """Set `weights_` to 1 / n_models; `y`, `sample_weight` and `folds` are ignored."""
        matrix = check_prediction_matrix(P)
        return self._fitted(matrix, P, np.full(matrix.shape[1], 1.0 / matrix.shape[1]))


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

    @classmethod
    def configured(cls, objective: Objective = "regression", n_trials: int = 0, seed: int = 0) -> GreedyBlender:
        """04_ensemble's greedy blend: at most 50 additions."""
        return cls(max_iter=50)

    def fit(self, P: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
            folds: ArrayLike | None = None) -> GreedyBlender:
        """Select models on `P`, shape (n_rows, n_models), against scores `y`, shape (n_rows,); `folds` is ignored."""
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
        self.history_ = history[:best_len]
        self.score_ = history[best_len - 1]
        logger.debug("greedy blend: %d selections, score %.5f, weights %s",
                     counts.sum(), self.score_, np.round(counts / counts.sum(), 3))
        return self._fitted(matrix, P, counts / counts.sum())


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

    def fit(self, P: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
            folds: ArrayLike | None = None) -> ScipyBlender:
        """Fit weights on `P`, shape (n_rows, n_models), against scores `y`, shape (n_rows,); `folds` is ignored."""
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
        weights = beta / beta.sum()
        self.loss_ = float(objective(weights)[0])
        return self._fitted(matrix, P, weights)


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


class LGBMStacker(Combiner):
    """LightGBM on OOF predictions (+ extra features), one booster per outer fold.

    For each fold f, the booster is trained on the rows of the folds other than f and g, and early-stopped
    on fold g, the fold after f in sorted order (cyclically); fold f is never seen. So at least three
    folds are needed, and the validation split respects the fold grouping (e.g. by prompt). New rows get the
    mean of the fold boosters.

    Args:
        objective: "regression" (L2) or "qwk" (the QWK surrogate of the module docstring).
        params: LightGBM parameters overriding `DEFAULT_LGB_PARAMS` (e.g. `tune_stacker`'s result).
        n_estimators: boosting round cap.
        early_stopping_rounds: patience on the inner validation fold.
        seed: seeds LightGBM (with deterministic=True and a fixed thread count results are reproducible).
        num_threads: LightGBM threads. One is the default: results do not depend on it, and on stacker-sized
            data (17k rows x tens of features) extra OpenMP threads were 3-5x slower on a busy 2-core box.
        n_trials: optuna trials of `tune` (0: `tune` keeps `params`).

    Attributes after `fit` (or `load`): `models_` ({fold: Booster}), `base_scores_` ({fold: float},
    the weighted mean label each booster starts from), `best_iterations_`, `feature_names_`; after `fit` also
    `oof_` (= `fit_pred_`), each row's prediction by the booster that never saw its fold.
    """

    uses_features = True
    out_of_fold = True
    min_folds = 4  # nested: one fold held out, an inner CV of three on the others
    DIR = "stacker"
    MODEL_FILE = "fold_{fold}.txt"
    META_FILE = "stacker.json"
    META_KEYS = ("objective", "params", "seed", "num_threads", "feature_names", "model_files", "base_scores",
                 "best_iterations")
    """What `load` reads from stacker.json."""

    def __init__(self, objective: Objective = "regression", params: Mapping[str, Any] | None = None,
                 n_estimators: int = 2000, early_stopping_rounds: int = 100, seed: int = 0, num_threads: int = 1,
                 n_trials: int = 0):
        self.objective = objective
        self.params = params
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.num_threads = num_threads
        self.n_trials = n_trials

    @classmethod
    def configured(cls, objective: Objective = "regression", n_trials: int = 0, seed: int = 0) -> LGBMStacker:
        return cls(objective=objective, seed=seed, n_trials=n_trials)

    def tune(self, X: pd.DataFrame | ArrayLike, y: ArrayLike, folds: ArrayLike,
             sample_weight: ArrayLike | None = None) -> LGBMStacker:
        """A copy with `params` found by `tune_stacker` on these training rows (>= 3 folds); unchanged for
        n_trials <= 0."""
        if self.n_trials <= 0:
            return clone(self)
        found = tune_stacker(X, y, folds, n_trials=self.n_trials, seed=self.seed, objective=self.objective,
                             sample_weight=sample_weight)
        return clone(self).set_params(params=found)

    @property
    def tuned_params(self) -> dict[str, Any]:
        return dict(self.params or {})

    def feature_importance(self) -> dict[str, float]:
        """Share of the total split gain of every feature, summed over the fold boosters, largest first."""
        if not getattr(self, "models_", None):
            raise NotFittedError("LGBMStacker: call fit or load first")
        gain = sum(np.asarray(b.feature_importance(importance_type="gain"), dtype=float) for b in self.models_.values())
        total = float(gain.sum()) or 1.0
        order = np.argsort(-gain, kind="stable")
        return {self.feature_names_[i]: float(gain[i] / total) for i in order}

    def lgb_params(self) -> dict[str, Any]:
        """The full LightGBM parameter dict used for training."""
        params = {**DEFAULT_LGB_PARAMS, **(self.params or {})}
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

    def fit(
        self,
        X: pd.DataFrame | ArrayLike,
        y: ArrayLike,
        sample_weight: ArrayLike | None = None,
        folds: ArrayLike | None = None,
        on_fold: FoldCallback | None = None,
    ) -> LGBMStacker:
        """Train one booster per fold; `oof_` (= `fit_pred_`), shape (n_rows,), holds their OOF predictions.

        Args:
            X: features, shape (n_rows, n_features) (DataFrame column names are kept); NaN allowed.
            y: true scores 1..6, shape (n_rows,).
            sample_weight: optional training/validation row weights, shape (n_rows,).
            folds: fold id per row, shape (n_rows,), at least three folds (required).
            on_fold: called after each fold as on_fold(step, fold, held_out_rows, held_out_preds); it may
                raise to stop training (tune_stacker prunes trials this way).
        """
        if self.objective not in ("regression", "qwk"):
            raise ValueError(f"objective must be 'regression' or 'qwk', got {self.objective!r}")
        frame = self._frame(X, fitting=True)
        labels = check_labels(y, "y")
        check_same_length(X=frame, y=labels)
        if folds is None:
            raise ValueError("LGBMStacker.fit needs folds: one booster is trained per fold")
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
        self.oof_ = self.fit_pred_ = oof
        return self

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
            raise NotFittedError("LGBMStacker is not fitted yet; call fit(X, y, folds=folds) or load(directory)")
        values = self._frame(X, fitting=False).to_numpy()
        return np.mean([self._predict_one(fold, values) for fold in sorted(self.models_)], axis=0)

    def save(self, directory: Path) -> dict[str, Any]:
        """Write each booster as a LightGBM text model plus `stacker.json` (features, objective, bases) into
        `directory`/stacker; the entry records the parameters and the objective."""
        if not hasattr(self, "models_"):
            raise NotFittedError("LGBMStacker is not fitted yet; nothing to save")
        folder = Path(directory) / self.DIR
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for fold, booster in sorted(self.models_.items()):
            name = self.MODEL_FILE.format(fold=fold)
            with atomic_write(folder / name) as tmp:
                booster.save_model(tmp, num_iteration=self.best_iterations_[fold])
            files[str(fold)] = name
        meta = {
            "objective": self.objective,
            "feature_names": self.feature_names_,
            "model_files": files,
            "base_scores": {str(k): v for k, v in self.base_scores_.items()},
            "best_iterations": {str(k): v for k, v in self.best_iterations_.items()},
            "params": self.tuned_params,
            "seed": self.seed,
            "num_threads": self.num_threads,
        }
        with atomic_write(folder / self.META_FILE) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return {"params": self.tuned_params, "objective": self.objective}

    @classmethod
    def load(cls, directory: Path, entry: Mapping[str, Any] | None = None) -> LGBMStacker:
        """Restore a stacker `save` wrote under `directory`, ready to `predict` (no training state needed)."""
        folder = Path(directory) / cls.DIR
        meta_path = folder / cls.META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found; save a fitted LGBMStacker there first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        stacker = cls(objective=meta["objective"], params=meta["params"], seed=int(meta["seed"]),
                      num_threads=int(meta["num_threads"]))
        stacker.feature_names_ = list(meta["feature_names"])
        stacker.models_ = {int(k): lgb.Booster(model_file=str(folder / v)) for k, v in meta["model_files"].items()}
        stacker.base_scores_ = {int(k): float(v) for k, v in meta["base_scores"].items()}
        stacker.best_iterations_ = {int(k): int(v) for k, v in meta["best_iterations"].items()}
        return stacker

    @classmethod
    def input_columns(cls, directory: Path, entry: Mapping[str, Any]) -> list[str] | None:
        """stacker.json's "feature_names"."""
        meta = read_json(Path(directory) / cls.DIR / cls.META_FILE, Problems(), "")
        names = meta.get("feature_names") if isinstance(meta, dict) else None
        return [str(n) for n in names] if isinstance(names, list) else None

    @classmethod
    def check(cls, directory: Path, entry: Mapping[str, Any], models: Sequence[str], problems: Problems,
              fix: str) -> None:
        """stacker.json with every key `load` reads, and every booster whole (see `lightgbm_model_problem`)."""
        folder = Path(directory) / cls.DIR
        meta_file = folder / cls.META_FILE
        meta = read_json(meta_file, problems, fix)
        if meta is None:
            return
        absent = [key for key in cls.META_KEYS if key not in meta]
        model_files = meta.get("model_files")
        if absent or not isinstance(model_files, dict) or not model_files:
            problems.bad(meta_file, f"lacks {absent or ['model_files']}: {TRUNCATED}", fix)
            return
        for fold, file in model_files.items():
            if (why := escapes(folder, file)) is not None:  # refused before anything there is read
                problems.bad(meta_file, f"'model_files' entry {fold}: {why}: refused (an artifact names only files "
                             "inside its folder)", fix)
                continue
            path = folder / file
            if not path.is_file():
                problems.missing(path, fix)
            elif (problem := lightgbm_model_problem(path)) is not None:
                problems.bad(path, problem, fix)


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
        X, y, folds, sample_weight: training rows only, as for `LGBMStacker.fit` (>= 3 folds).
        n_trials: optuna trials.
        seed: seeds the TPE sampler and LightGBM.
        objective: stacker objective, "regression" or "qwk".
        score: "rounded" (QWK of clip(rint)) or "thresholded" (QWK after thresholds fitted on the inner
            OOF predictions, slightly optimistic but equally so for every trial).
        n_estimators, early_stopping_rounds: kept small so a trial takes seconds.

    Returns:
        The best parameters, a plain dict to pass as `LGBMStacker(params=...)`.
    """
    import optuna  # here, not at the top: 05_infer and the Kaggle bundle load this module and never tune

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

        oof = stacker.fit(X, labels, sample_weight=w, folds=folds, on_fold=report).oof_
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
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines print every float in full
    try:
        study.optimize(trial_value, n_trials=n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    logger.info("tune_stacker: best inner-CV QWK %.4f over %d trials (%d pruned): %s",
                study.best_value, len(study.trials), pruned,
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_params.items()))
    return dict(study.best_params)


COMBINERS: dict[str, type[Combiner]] = {
    "mean": MeanBlender,
    "greedy": GreedyBlender,
    "scipy": ScipyBlender,
    "stacker": LGBMStacker,
}
"""Every method 04_ensemble evaluates, by the name ensemble.json records, simplest first: selection keeps the
simpler one unless a more complex one wins by more than the interval of their paired difference."""
