"""The LightGBM stacker: a booster per fold on the models' OOF predictions (+ class probabilities, + text and
prompt features of `common.ensemble.features`), behind the `Combiner` interface (common.scoring.combiner).

`LGBMStacker` trains one booster per fold on exactly the given folds (early stopping on another training fold,
never the held-out one), keeps their OOF predictions, and saves / loads as plain LightGBM text models plus a JSON
file; `check` verifies those files (`common.core.lightgbm_files`) before 05_infer runs any model. Its `tune`
searches the LightGBM parameters with optuna (`common.ensemble.tuning`, imported there only: 05_infer and the
Kaggle bundle load this module to predict and never tune).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from common.core.artifact_checks import TRUNCATED, Problems, escapes, read_json
from common.core.io import atomic_write
from common.core.lightgbm_files import lightgbm_model_problem
from common.ensemble.surrogate import qwk_objective, qwk_surrogate_eval
from common.scoring.combiner import Combiner, Objective
from common.scoring.metrics import check_labels, check_same_length, check_sample_weight
from common.scoring.nested import check_folds

logger = logging.getLogger(__name__)


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
        objective: "regression" (L2) or "qwk" (the QWK surrogate of `common.ensemble.surrogate`).
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
        # imported here, not at the top: 05_infer and the Kaggle bundle load this module and never tune
        from common.ensemble.tuning import tune_stacker

        return clone(self).set_params(params=tune_stacker(self, X, y, folds, sample_weight=sample_weight))

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
            feval=qwk_surrogate_eval if self.objective == "qwk" else None,
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

