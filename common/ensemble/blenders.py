"""The blends: weighted means of the models' OOF predictions, with non-negative weights summing to one.

Inputs everywhere: `P`, shape (n_rows, n_models), continuous OOF predictions on the score scale (a DataFrame with
one column per model in 04 and 05); `y`, shape (n_rows,), true scores 1..6.

- `MeanBlender`: the plain mean, the baseline every other method must beat.
- `GreedyBlender`: forward selection with replacement on thresholded QWK (Caruana et al.).
- `ScipyBlender`: SLSQP on the simplex, on squared error or the smooth QWK surrogate (`common.ensemble.surrogate`).

Each implements `Combiner` (common.scoring.combiner) and is named in `common.ensemble.combiners.COMBINERS`; a fitted
blend is saved as its weights by model inside ensemble.json, which 05_infer loads and checks through this module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from sklearn.exceptions import NotFittedError

from common.core.artifact_checks import ENSEMBLE_FILE, TRUNCATED, Problems
from common.ensemble.surrogate import qwk_surrogate
from common.scoring.combiner import Combiner, Objective
from common.scoring.metrics import check_labels, check_same_length, check_sample_weight, qwk
from common.scoring.thresholds import ThresholdSearcher, round_scores

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

class ScipyBlender(_WeightedBlend):
    """Weights on the simplex (non-negative, sum 1) fitted with SLSQP.

    Args:
        loss: "mse" (weighted mean squared error to y) or "qwk" (the smooth QWK surrogate f / g of
            `common.ensemble.surrogate`, which rewards spread as well as accuracy).
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


class PromptBlender(Combiner):
    """The scipy blend fitted within each recovered prompt cluster: models that differ in quality from one prompt to
    another (a TF-IDF member strong where length and wording carry the score, a transformer where content does) get
    their weights prompt by prompt; a cluster with fewer than `min_rows` training rows, and an essay of no known
    cluster, get the weights fitted on every row.

    X: the stacker features (`common.ensemble.features.stacker_features`) of which it reads the model predictions
    (`pred__<model>`) and the prompt cluster columns (`prompt__<k>`, one 0/1 column per cluster; 04 evaluates this
    method only with `ensemble.prompt_features` on). Saved as weights in ensemble.json, no files.

    Attributes after `fit`: `columns_` (the prediction columns), `weights_` (all rows), `weights_by_prompt_`
    ({cluster: weights}).
    """

    uses_features = True
    needs_prompt_features = True  # without the cluster columns it would be the scipy blend again
    PRED, PROMPT = "pred__", "prompt__"

    def __init__(self, min_rows: int = 200, loss: Literal["mse", "qwk"] = "mse", max_iter: int = 200):
        self.min_rows = min_rows
        self.loss = loss
        self.max_iter = max_iter

    @classmethod
    def _split(cls, X: pd.DataFrame, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """(the prediction columns, each row's prompt cluster as text; "" for a row of none)."""
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"{cls.__name__} takes the stacker features as a DataFrame, got {type(X).__name__}")
        columns = list(columns) if columns is not None else [c for c in X.columns if c.startswith(cls.PRED)]
        missing = [c for c in columns if c not in X.columns]
        if missing or not columns:
            raise ValueError(f"X lacks the model prediction columns {missing or [cls.PRED + '<model>']}")
        clusters = np.full(len(X), "", dtype=object)
        for column in [c for c in X.columns if c.startswith(cls.PROMPT)]:
            clusters[X[column].to_numpy() > 0.5] = column.removeprefix(cls.PROMPT)
        return X[columns], clusters

    def fit(self, X: pd.DataFrame, y: ArrayLike, sample_weight: ArrayLike | None = None,
            folds: ArrayLike | None = None) -> PromptBlender:
        """The all-rows blend, then one per cluster with at least `min_rows` rows; `folds` is ignored."""
        P, clusters = self._split(X)
        labels = check_labels(y, "y")
        w = check_sample_weight(sample_weight, len(labels))
        blend = lambda rows: ScipyBlender(self.loss, self.max_iter).fit(  # noqa: E731
            P[rows], labels[rows], None if w is None else w[rows]).weights_
        self.columns_ = [str(c) for c in P.columns]
        self.weights_ = blend(np.ones(len(labels), dtype=bool))
        counted = np.ones(len(labels), dtype=bool) if w is None else w > 0  # rows the fit weighs at all
        self.weights_by_prompt_ = {str(c): blend(clusters == c) for c in np.unique(clusters)
                                   if c != "" and (counted & (clusters == c)).sum() >= self.min_rows}
        self.fit_pred_ = self.predict(X)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Each row's blend with its cluster's weights (the all-rows weights for a cluster fitted without its own)."""
        if not hasattr(self, "weights_"):
            raise NotFittedError("PromptBlender is not fitted yet; call fit(X, y) first")
        P, clusters = self._split(X, self.columns_)
        matrix = check_prediction_matrix(P)
        out = matrix @ self.weights_
        for cluster, weights in self.weights_by_prompt_.items():
            rows = clusters == cluster
            out[rows] = matrix[rows] @ weights
        return out

    def save(self, directory: Path) -> dict[str, Any]:
        """No files: the entry holds the weights by prediction column, on all rows and per cluster."""
        named = lambda weights: {c: float(v) for c, v in zip(self.columns_, weights, strict=True)}  # noqa: E731
        return {"weights": named(self.weights_),
                "weights_by_prompt": {c: named(w) for c, w in self.weights_by_prompt_.items()}}

    @classmethod
    def load(cls, directory: Path, entry: Mapping[str, Any]) -> PromptBlender:
        blend = cls()
        blend.columns_ = list(entry["weights"])
        as_array = lambda named: np.asarray([float(named[c]) for c in blend.columns_], dtype=np.float64)  # noqa: E731
        blend.weights_ = as_array(entry["weights"])
        blend.weights_by_prompt_ = {str(c): as_array(w) for c, w in entry["weights_by_prompt"].items()}
        return blend

    @classmethod
    def input_columns(cls, directory: Path, entry: Mapping[str, Any]) -> list[str] | None:
        weights = entry.get("weights")
        return [str(c) for c in weights] if isinstance(weights, dict) else None

    @classmethod
    def check(cls, directory: Path, entry: Mapping[str, Any], models: Sequence[str], problems: Problems,
              fix: str) -> None:
        weights, by_prompt = entry.get("weights"), entry.get("weights_by_prompt")
        numbers = lambda named: isinstance(named, dict) and all(  # noqa: E731
            isinstance(v, int | float) for v in named.values())
        if not (numbers(weights) and isinstance(by_prompt, dict)
                and all(numbers(w) and set(w) == set(weights) for w in by_prompt.values())):
            problems.bad(directory / ENSEMBLE_FILE, "the selected PromptBlender needs 'weights' ({column: weight}) "
                         f"and 'weights_by_prompt' ({{cluster: the same columns}}), found {weights!r} and "
                         f"{by_prompt!r}: {TRUNCATED}", fix)
