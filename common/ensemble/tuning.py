"""The stacker's parameter search: optuna (seeded TPE, median pruning) over LightGBM parameters, on training rows
only. Only 04_ensemble tunes (through `LGBMStacker.tune`), so the Kaggle bundle leaves this module and optuna out.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import clone

from common.scoring.combiner import Combiner
from common.scoring.metrics import check_labels, check_sample_weight, qwk
from common.scoring.thresholds import ThresholdSearcher, round_scores

logger = logging.getLogger(__name__)


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
    stacker: Combiner,
    X: pd.DataFrame | ArrayLike,
    y: ArrayLike,
    folds: ArrayLike,
    sample_weight: ArrayLike | None = None,
    score: Literal["rounded", "thresholded"] = "rounded",
    n_estimators: int = 300,
    early_stopping_rounds: int = 30,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Search LightGBM parameters for `stacker` with optuna (seeded TPE, median pruning).

    Every row passed in is a *training* row: the trial value is the QWK of inner-CV predictions over
    `folds`, so tuning must never see the rows it will be judged on. Call it once per outer fold with
    that fold's training rows (nested CV), or on the training folds only, never on all OOF rows before
    reporting a CV score on them.

    Args:
        stacker: the unfitted `LGBMStacker` (common.ensemble.stacker) to tune: its `n_trials` (>= 1) optuna
            trials, its `seed` (the TPE sampler's and LightGBM's) and its `objective`, "regression" or "qwk".
            It is passed in, not imported: the stacker's module imports this one, in `LGBMStacker.tune`.
        X, y, folds, sample_weight: training rows only, as for `LGBMStacker.fit` (>= 3 folds).
        score: "rounded" (QWK of clip(rint)) or "thresholded" (QWK after thresholds fitted on the inner
            OOF predictions, slightly optimistic but equally so for every trial).
        n_estimators, early_stopping_rounds, num_threads: each trial's, kept small so a trial takes seconds.

    Returns:
        The best parameters, a plain dict to pass as `LGBMStacker(params=...)`.
    """
    if score not in ("rounded", "thresholded"):
        raise ValueError(f"score must be 'rounded' or 'thresholded', got {score!r}")
    if stacker.n_trials < 1:
        raise ValueError(f"tune_stacker needs at least one trial, the stacker has n_trials={stacker.n_trials}; "
                         "set n_trials (ensemble.n_trials in params.yaml) to 1 or more")
    labels = check_labels(y, "y")
    w = check_sample_weight(sample_weight, len(labels))

    def trial_value(trial: optuna.Trial) -> float:
        candidate = clone(stacker).set_params(params=_suggest_params(trial), n_estimators=n_estimators,
                                              early_stopping_rounds=early_stopping_rounds, num_threads=num_threads)
        done = np.zeros(len(labels), dtype=bool)
        preds = np.zeros(len(labels))

        def report(step: int, fold: int, rows: np.ndarray, held_preds: np.ndarray) -> None:
            done[rows] = True
            preds[rows] = held_preds
            trial.report(qwk(labels[done], round_scores(preds[done]),
                             sample_weight=None if w is None else w[done]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold}")

        oof = candidate.fit(X, labels, sample_weight=w, folds=folds, on_fold=report).oof_
        if score == "thresholded":
            scores = ThresholdSearcher(polish=False).fit(oof, labels, sample_weight=w).predict(oof)
        else:
            scores = round_scores(oof)
        return qwk(labels, scores, sample_weight=w)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=stacker.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines print every float in full
    try:
        study.optimize(trial_value, n_trials=stacker.n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    logger.info("tune_stacker: best inner-CV QWK %.4f over %d trials (%d pruned): %s",
                study.best_value, len(study.trials), pruned,
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_params.items()))
    return dict(study.best_params)
