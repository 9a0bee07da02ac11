"""Stage 04_ensemble's logic: score every way of combining the models honestly, pick one, fit it for inference.

Methods: `mean` and `greedy` / `scipy` blends of the models' OOF predictions, and a LightGBM `stacker`
on the predictions (+ class probabilities, + text features). Each is scored *nested*: for every fold
the weights (or the stacker, with its optuna tuning) and the thresholds are fitted on the other folds
only, and the held-out fold is scored with them. The method with the best nested QWK (on all rows or
on other-origin rows, as `select_on` says) is selected; it is then refitted on every row for
inference, and everything 05_infer needs is returned as plain data (weights, thresholds, the stacker).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from common.clusters import PromptAssigner
from common.ensemble import (
    GreedyBlender,
    LGBMStacker,
    MeanBlender,
    ScipyBlender,
    nested_blend_predictions,
    prompt_mix_weights,
    tune_stacker,
)
from common.metrics import qwk
from common.oof import OOFSet
from common.text_features import TextFeaturizer
from common.thresholds import ThresholdSearcher

log = logging.getLogger(__name__)

BLENDERS: dict[str, Callable[[], Any]] = {
    "mean": MeanBlender,
    "greedy": lambda: GreedyBlender(max_iter=50),
    "scipy": ScipyBlender,
}


@dataclass
class MethodResult:
    """One combining method: nested held-out scores, figures, and its all-rows fit for inference."""

    name: str
    nested_pred: np.ndarray  # continuous held-out prediction per row
    nested_scores: np.ndarray  # held-out thresholded scores 1..6
    figures: dict[str, float | None]
    thresholds: list[float]  # fitted on all rows, for inference
    weights: dict[str, float] | None = None  # blends
    stacker: LGBMStacker | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnsembleResult:
    methods: dict[str, MethodResult]
    selected: str
    featurizer: TextFeaturizer | None
    feature_columns: list[str]
    metrics: dict[str, Any]
    prompt_assigner: PromptAssigner | None = None
    prompt_stats: PromptStats | None = None


def _figures(y: np.ndarray, other: np.ndarray, nested: np.ndarray, insample: np.ndarray,
             w: np.ndarray | None) -> dict[str, float | None]:
    def score(rows: np.ndarray, pred: np.ndarray) -> float | None:
        if rows.sum() == 0 or len(np.unique(y[rows])) < 2:
            return None
        return qwk(y[rows], pred[rows], sample_weight=None if w is None else w[rows])

    every = np.ones(len(y), dtype=bool)
    return {
        "qwk_nested": score(every, nested),
        "qwk_nested_other": score(other, nested),
        "qwk_insample": score(every, insample),
        "qwk_insample_other": score(other, insample),
    }


def _blend(name: str, oofs: OOFSet, w: np.ndarray | None) -> MethodResult:
    factory = BLENDERS[name]
    P, y = oofs.matrix(), oofs.y
    nested = nested_blend_predictions(P, y, oofs.fold, factory, sample_weight=w)
    nested_pred, nested_scores = nested.blended, nested.scores
    blender = factory().fit(P, y, sample_weight=w)
    blend_all = blender.predict(P)
    searcher = ThresholdSearcher().fit(blend_all, y, sample_weight=w)
    return MethodResult(
        name=name,
        nested_pred=nested_pred,
        nested_scores=nested_scores,
        figures=_figures(y, oofs.other, nested_scores, searcher.predict(blend_all), w),
        thresholds=[float(t) for t in searcher.thresholds_],
        weights={m: float(v) for m, v in zip(oofs.names, blender.weights_, strict=True)},
    )


PromptStats = dict[str, dict[str, list[float]]]
"""Per-prompt statistics of the stacker's prediction and text columns: {column: {cluster: [mean, std]}}."""


def stacker_features(preds: Mapping[str, np.ndarray], probs: Mapping[str, pd.DataFrame],
                     text_frame: pd.DataFrame | None, prompts: np.ndarray | None = None,
                     prompt_stats: PromptStats | None = None) -> pd.DataFrame:
    """Stacker inputs: one column per model prediction, class probabilities, text features, and, when
    `prompts` (the prompt cluster of each row) and `prompt_stats` are given, prompt features: one 0/1
    column `prompt__<k>` per cluster k of the stats, and `z__<column>`, each prediction and text feature
    standardised within its row's cluster (an essay long for its prompt, a score high for its prompt).

    The same function builds them from OOF predictions (04_ensemble) and from test predictions (05_infer),
    the latter with the stats saved from the former.
    """
    parts = [pd.DataFrame({f"pred__{name}": values for name, values in preds.items()})]
    parts.extend(frame.add_prefix(f"{name}__").reset_index(drop=True) for name, frame in probs.items())
    if text_frame is not None:
        parts.append(text_frame.add_prefix("text__").reset_index(drop=True))
    frame = pd.concat(parts, axis=1)
    # LightGBM refuses JSON punctuation in feature names; model names may hold any character.
    frame.columns = [re.sub(r"[^\w.\-]", "_", c) for c in frame.columns]
    if prompts is None or prompt_stats is None:
        return frame
    prompts = np.asarray(prompts).astype(str)
    classes = sorted(next(iter(prompt_stats.values())), key=int)
    unknown = sorted({str(p) for p in prompts} - set(classes))
    if unknown:
        raise ValueError(f"prompt clusters {unknown} have no statistics (known: {classes})")
    extra = {f"prompt__{k}": (prompts == k).astype(np.float64) for k in classes}
    for column, per_cluster in prompt_stats.items():
        if column not in frame:
            raise ValueError(f"prompt statistics name column {column!r}, which the stacker features lack")
        mean = np.array([per_cluster[k][0] for k in prompts])
        std = np.array([per_cluster[k][1] for k in prompts])
        extra[f"z__{column}"] = (frame[column].to_numpy(dtype=np.float64) - mean) / std
    return pd.concat([frame, pd.DataFrame(extra)], axis=1)


def fit_prompt_stats(X: pd.DataFrame, prompts: np.ndarray, classes: Sequence[int]) -> PromptStats:
    """Mean and standard deviation of every `pred__` and `text__` column of X within each prompt cluster.

    classes: every cluster test essays may be assigned to; one without rows in X gets the statistics of all
    rows. No label is used. A cluster with a single row, or a constant column, gets standard deviation 1.
    """
    prompts = np.asarray(prompts).astype(str)
    stats: PromptStats = {}
    for column in [c for c in X.columns if c.startswith(("pred__", "text__"))]:
        values = X[column].to_numpy(dtype=np.float64)
        stats[column] = {}
        for k in sorted({str(int(c)) for c in classes}, key=int):
            v = values[prompts == k] if (prompts == k).any() else values
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            stats[column][k] = [float(v.mean()), std if std > 1e-12 else 1.0]
    return stats


def stacker_method(
    X: pd.DataFrame, oofs: OOFSet, w: np.ndarray | None, objective: Literal["regression", "qwk"],
    n_trials: int, seed: int,
) -> MethodResult:
    """The LightGBM stacker on features X (rows in `oofs` order): nested held-out scores and figures, and
    the stacker refitted on every row with its thresholds, for inference."""
    y, folds = oofs.y, oofs.fold
    fold_ids = np.unique(folds)

    def tuned(rows: np.ndarray) -> dict[str, Any]:
        if n_trials <= 0:
            return {}
        return tune_stacker(X[rows], y[rows], folds[rows], n_trials=n_trials, seed=seed, objective=objective,
                            sample_weight=None if w is None else w[rows])

    # Nested, mirroring inference: for held-out fold f, everything is fitted on the other folds only --
    # tuning, the fold boosters (inner CV over the remaining folds) and the thresholds (on those
    # boosters' inner OOF predictions) -- and fold f is predicted by the mean of the boosters.
    nested_pred = np.zeros(len(y))
    nested_scores = np.zeros(len(y), dtype=np.int64)
    params_per_fold = {}
    for fold in fold_ids:
        held = folds == fold
        params = tuned(~held)
        params_per_fold[str(int(fold))] = params
        inner = LGBMStacker(objective=objective, params=params, seed=seed)
        w_train = None if w is None else w[~held]
        inner_oof = inner.fit_oof(X[~held], y[~held], folds[~held], sample_weight=w_train)
        searcher = ThresholdSearcher().fit(inner_oof, y[~held], sample_weight=w_train)
        nested_pred[held] = inner.predict(X[held])
        nested_scores[held] = searcher.predict(nested_pred[held])

    # For inference: tuned on every row, fold boosters averaged, thresholds on its OOF predictions.
    final = LGBMStacker(objective=objective, params=tuned(np.ones(len(y), dtype=bool)), seed=seed)
    oof_all = final.fit_oof(X, y, folds, sample_weight=w)
    searcher = ThresholdSearcher().fit(oof_all, y, sample_weight=w)
    return MethodResult(
        name="stacker",
        nested_pred=nested_pred,
        nested_scores=nested_scores,
        figures=_figures(y, oofs.other, nested_scores, searcher.predict(oof_all), w),
        thresholds=[float(t) for t in searcher.thresholds_],
        stacker=final,
        extra={"params_per_fold": params_per_fold, "params": final.params, "objective": objective},
    )


def build_ensemble(
    oofs: OOFSet,
    texts: list[str] | None,
    select_on: Literal["all", "other"],
    stacker_objective: Literal["regression", "qwk"],
    n_trials: int,
    prompt_mix: dict[str, float],
    seed: int,
    prompt_features: bool = False,
    text_features: bool = True,
) -> EnsembleResult:
    """Score mean / greedy / scipy blends and the stacker nested, select one, refit it on all rows.

    Args:
        oofs: labels, folds, origins and every model's OOF predictions.
        texts: train essays in `oofs.folds` row order, or None to use predictions only.
        select_on: "all" or "other": whose nested QWK picks the method.
        stacker_objective: LightGBM objective, "regression" or "qwk".
        n_trials: optuna trials per stacker tuning (0: default LightGBM parameters).
        prompt_mix: target share per prompt name for weighting rows; empty for unweighted.
        seed: seeds the stacker and its tuning.
        text_features: give the stacker `TextFeaturizer`'s features of `texts` (when texts are given).
        prompt_features: give the stacker the essay's prompt cluster (one 0/1 column per cluster) and every
            prediction and text feature standardised within the cluster, so it can score each prompt on its
            own scale. The clusters come from a `PromptAssigner` fitted on `texts` and
            `oofs.folds["prompt_cluster"]` (no score is used), which 05_infer applies to the test essays; the
            per-cluster means and deviations (`EnsembleResult.prompt_stats`, no score used either) are taken
            over all train rows and reused for the test essays. Needs `texts`.
    """
    w = prompt_mix_weights(oofs.folds["prompt_name"].to_numpy(), prompt_mix) if prompt_mix else None
    methods = {name: _blend(name, oofs, w) for name in BLENDERS}
    featurizer, text_frame = None, None
    if texts is not None and text_features:
        featurizer = TextFeaturizer().fit(texts)
        text_frame = featurizer.transform(texts)
    X = stacker_features(oofs.preds, oofs.probs, text_frame)
    assigner, prompt_stats = None, None
    if prompt_features:
        if texts is None:
            raise ValueError("build_ensemble: prompt_features needs the train texts")
        assigner = PromptAssigner(seed=seed).fit(texts, oofs.folds["prompt_cluster"].to_numpy())
        prompts = assigner.predict(texts)
        agreement = float(np.mean(prompts == oofs.folds["prompt_cluster"].to_numpy()))
        log.info("prompt assigner: %d clusters, agrees with 00_prepare's clusters on %.1f%% of the train essays",
                 len(assigner.classes_), 100 * agreement)
        prompt_stats = fit_prompt_stats(X, prompts, assigner.classes_)
        X = stacker_features(oofs.preds, oofs.probs, text_frame, prompts, prompt_stats)
    if len(np.unique(oofs.fold)) >= 4:
        methods["stacker"] = stacker_method(X, oofs, w, stacker_objective, n_trials, seed)
    else:
        log.warning("stacker skipped: nested stacking needs at least 4 folds (held out, inner CV of 3)")

    key = "qwk_nested" if select_on == "all" else "qwk_nested_other"
    ranked = sorted(methods.values(), key=lambda m: -(m.figures[key] if m.figures[key] is not None else -1.0))
    selected = ranked[0].name
    for m in methods.values():
        log.info(
            "%-8s nested QWK %.4f (other-origin %s), in-sample %.4f",
            m.name, m.figures["qwk_nested"], _fmt(m.figures["qwk_nested_other"]), m.figures["qwk_insample"],
        )
    log.info("selected %s by nested QWK on %s rows", selected, select_on)
    metrics = {
        "selected": selected,
        "select_on": select_on,
        "qwk_nested": methods[selected].figures["qwk_nested"],
        "qwk_nested_other": methods[selected].figures["qwk_nested_other"],
        "methods": {name: m.figures for name, m in methods.items()},
        "models": oofs.names,
        "n_rows": len(oofs.y),
        "n_other": int(oofs.other.sum()),
        "weighted_by_prompt_mix": bool(prompt_mix),
    }
    if assigner is not None:
        metrics["prompt_assigner_agreement"] = agreement
    return EnsembleResult(methods, selected, featurizer, list(X.columns), metrics, assigner, prompt_stats)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
