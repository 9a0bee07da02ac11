"""Stage 04_ensemble's logic: score every way of combining the models honestly, pick one, fit it for inference.

Methods: every combiner of `common.ensemble.combiners.COMBINERS` -- `mean` and `greedy` / `scipy` blends of the
models' OOF predictions, `per_prompt` (the scipy blend per prompt cluster, with prompt features on), and a LightGBM
`stacker` on the predictions (+ class probabilities, + text features). Each
is scored *nested* (`common.scoring.nested.Chain`): for every fold the combiner (with its tuning: the stacker's
optuna search) and the thresholds are fitted on the other folds only, and the held-out fold is scored with them,
at the target weight of other-origin rows chosen inside the other folds (`common.ensemble.target`). The rule of
`ensemble.selection` picks one (`common.ensemble.selection`; by default `noise_aware`: the best nested QWK on the
target's rows, unless methods within its paired interval there are ahead on all rows); every method is also fitted on every row, for inference
(`common.ensemble.ensemble_artifact` saves them for 05_infer).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from common.ensemble.blenders import check_prediction_matrix
from common.ensemble.combiners import COMBINERS
from common.ensemble.features import TEST_ORIGIN, PromptStats, fit_prompt_stats, stacker_features
from common.ensemble.selection import bootstraps, interval_table, pick_weight, select_method
from common.ensemble.target import Rows, Target, prompt_mix_weights, qwk_on, weight_label
from common.prepare.clusters import PromptAssigner
from common.prepare.text_features import TextFeaturizer
from common.scoring.combiner import Combiner, Objective
from common.scoring.nested import Chain
from common.scoring.oof import OOFSet
from common.scoring.thresholds import GroupThresholds
from common.scoring.uncertainty import DEFAULT_DRAWS, DEFAULT_LEVEL

log = logging.getLogger(__name__)

MIN_FOLDS_TO_CHOOSE = 3
"""Fewest folds with which a target weight can be chosen inside each training split (an inner CV over its folds)."""


@dataclass
class MethodResult:
    """One combining method: nested held-out scores, figures, and its all-rows fit for inference."""

    name: str
    nested_pred: np.ndarray  # continuous held-out prediction per row (target weight chosen inside each fold)
    nested_scores: np.ndarray  # held-out thresholded scores 1..6
    figures: dict[str, float | None]
    thresholds: list[float]  # fitted on all rows for test essays (other-origin ones with origin thresholds)
    combiner: Combiner  # fitted on every row at the chosen target weight, for inference
    extra: dict[str, Any] = field(default_factory=dict)  # target weights, origin thresholds, tuned parameters
    frontier: dict[float, np.ndarray] = field(default_factory=dict)  # target weight -> nested scores


@dataclass
class EnsembleResult:
    methods: dict[str, MethodResult]
    selected: str
    featurizer: TextFeaturizer | None
    feature_columns: list[str]
    metrics: dict[str, Any]
    prompt_assigner: PromptAssigner | None = None
    prompt_stats: PromptStats | None = None
    frontier: pd.DataFrame | None = None
    intervals: pd.DataFrame | None = None


def _figures(rows: Rows, nested: np.ndarray, insample: np.ndarray) -> dict[str, float | None]:
    other = rows.base * rows.other
    return {
        "qwk_nested": qwk_on(rows, nested, rows.base),
        "qwk_nested_other": qwk_on(rows, nested, other),
        "qwk_insample": qwk_on(rows, insample, rows.base),
        "qwk_insample_other": qwk_on(rows, insample, other),
    }


def _chain(inputs: Any, rows: Rows, target: Target, combiner: Callable[[np.ndarray], Combiner] | None = None
           ) -> Chain:
    """A chain on these rows: the combiner (None: `inputs` is one model's predictions), then thresholds per origin
    when the target says so."""
    return Chain(inputs, rows.y, rows.folds, GroupThresholds, combiner, rows.groups(target))


def choose_weight(chain: Chain, rows: Rows, target: Target, out_of_fold: bool) -> Callable[[np.ndarray], float]:
    """A chooser of the target weight from training rows alone: nested scores (inner CV over the training rows'
    folds) at every candidate, the best on the target's rows of the training split. When the combiner's predictions
    of its training rows are out-of-fold (the stacker's inner CV), the inner CV refits only the thresholds on them."""

    def inner(train: np.ndarray, weight: float) -> np.ndarray:
        w = target.fit_weights(weight, rows.other, rows.base)
        if not out_of_fold:
            return chain.nested(w, within=train).scores
        pred = np.zeros(rows.y.size)
        pred[train] = chain.fit(train, w).train_pred
        return _chain(pred, rows, target).nested(w, within=train).scores

    def chooser(train: np.ndarray) -> float:
        return pick_weight({w: inner(train, w) for w in target.candidates}, rows, target, train)[0]

    return chooser


def _tuned(proto: Combiner, inputs: Any, rows: Rows) -> tuple[Callable[[np.ndarray], Combiner], dict[bytes, Combiner]]:
    """A maker of unfitted combiners for training rows, tuned once per training split (on the prompt-mix weights,
    whatever the target weight), and the tuned ones by split."""
    tuned: dict[bytes, Combiner] = {}

    def make(train: np.ndarray) -> Combiner:
        key = train.tobytes()
        if key not in tuned:
            tuned[key] = proto.tune(inputs[train], rows.y[train], rows.folds[train], rows.base[train])
        return clone(tuned[key])

    return make, tuned


def evaluate_method(name: str, inputs: Any, rows: Rows, target: Target, proto: Combiner) -> MethodResult:
    """One combiner (`proto`, unfitted) on its inputs (rows in `rows` order): nested held-out scores and figures, and
    the combiner refitted on every row with its thresholds, for inference.

    Nested, mirroring inference: for held-out fold f, everything is fitted on the other folds only -- the tuning,
    the combiner (trained under the target weights; the stacker's boosters by inner CV over the remaining folds)
    and the thresholds (on the combiner's predictions of those rows). With several candidate target weights, the one
    for fold f is chosen by nested scores inside the other folds (`choose_weight`), on the target's rows.
    """
    make, tuned = _tuned(proto, inputs, rows)
    chain = _chain(inputs, rows, target, make)
    weights_at = lambda weight: target.fit_weights(weight, rows.other, rows.base)  # noqa: E731
    frontier = {w: chain.nested(weights_at(w)).scores for w in target.candidates}
    every = np.ones(rows.y.size, dtype=bool)
    fold_ids = np.unique(rows.folds)
    if len(target.candidates) > 1 and fold_ids.size < MIN_FOLDS_TO_CHOOSE:
        final, why = min(target.candidates), (
            f"choosing it inside each training split needs at least {MIN_FOLDS_TO_CHOOSE} folds, there are "
            f"{fold_ids.size}: the smallest candidate is used (set ensemble.target to a number to fix another)")
        log.warning("%s: target weight %s: %s", name, weight_label(final), why)
        used = {str(int(f)): final for f in fold_ids}
    else:
        final, why = pick_weight(frontier, rows, target, every)
        chooser = choose_weight(chain, rows, target, proto.out_of_fold)
        used = {str(int(f)): final if len(target.candidates) == 1 else chooser(rows.folds != f) for f in fold_ids}
    by_split = {(rows.folds != int(k)).tobytes(): w for k, w in used.items()}
    nested = chain.nested(lambda train: weights_at(by_split[train.tobytes()]))
    log.info("%s: target weight of other-origin rows per fold %s, on all rows %s", name,
             {k: weight_label(v) for k, v in used.items()}, weight_label(final))
    fitted = chain.fit(every, weights_at(final))
    insample = chain.score(fitted, fitted.train_pred, every)
    extra = {**_target_extra(final, used, fitted.thresholds), "target_weight_reason": why}
    if target.by_prompt and rows.prompt is not None:  # the test essays' cut points per prompt cluster
        extra["thresholds_by_prompt"] = {str(c): fitted.thresholds.thresholds_for(test_essay_group(c, target))
                                         for c in np.unique(rows.prompt)}
    if proto.tuned_params is not None:
        extra["params_per_fold"] = {str(int(f)): tuned[(rows.folds != f).tobytes()].tuned_params for f in fold_ids}
    return MethodResult(
        name=name, nested_pred=nested.pred, nested_scores=nested.scores,
        figures=_figures(rows, nested.scores, insample),
        thresholds=fitted.thresholds.thresholds_for(TEST_ORIGIN if target.by_origin else None),
        combiner=fitted.combiner, extra=extra, frontier=frontier,
    )


def test_essay_group(cluster: Any, target: Target) -> str | None:
    """The thresholds' group of a test essay of prompt `cluster` (every test essay is other-origin)."""
    if target.by_prompt:
        return f"{TEST_ORIGIN}|{cluster}" if target.by_origin else str(cluster)
    return TEST_ORIGIN if target.by_origin else None


def _target_extra(final: float, used: dict[str, float], thresholds: GroupThresholds) -> dict[str, Any]:
    return {"target_weight": weight_label(final),
            "target_weight_per_fold": {k: weight_label(v) for k, v in used.items()},
            "thresholds_by_origin": thresholds.by_group_, "thresholds_shared": thresholds.shared_}


def model_scores(oofs: OOFSet, rows: Rows, target: Target) -> dict[str, np.ndarray]:
    """Each model's nested thresholded scores (thresholds per origin as the target says), for the intervals."""
    return {f"model:{name}": _chain(pred, rows, target).nested(rows.base).scores for name, pred in oofs.preds.items()}


def frontier_table(methods: Mapping[str, MethodResult], rows: Rows) -> pd.DataFrame:
    """Nested QWK on all rows and on other-origin rows of every method at every candidate target weight, and of
    the whole procedure (weight chosen inside each training split, `target_weight` 'chosen')."""
    out = []
    for name, m in methods.items():
        for weight, scores in m.frontier.items():
            figures = _figures(rows, scores, scores)
            out.append({"method": name, "target_weight": weight_label(weight), "qwk_all": figures["qwk_nested"],
                        "qwk_other": figures["qwk_nested_other"]})
        out.append({"method": name, "target_weight": "chosen", "qwk_all": m.figures["qwk_nested"],
                    "qwk_other": m.figures["qwk_nested_other"]})
    return pd.DataFrame(out)


def build_ensemble(
    oofs: OOFSet,
    texts: list[str] | None,
    target: Target,
    stacker_objective: Objective,
    n_trials: int,
    prompt_mix: dict[str, float],
    seed: int,
    prompt_features: bool = False,
    text_features: bool = True,
    n_draws: int = DEFAULT_DRAWS,
    level: float = DEFAULT_LEVEL,
    selection: str = "noise_aware",
) -> EnsembleResult:
    """Score every method of `COMBINERS` nested, select one, and fit each on all rows.

    Args:
        oofs: labels, folds, origins and every model's OOF predictions.
        texts: train essays in `oofs.folds` row order, or None to use predictions only.
        target: which rows every fit (blend weights, thresholds, stacker weights and early stopping) and the
            selection are for; see `Target`.
        stacker_objective: LightGBM objective, "regression" or "qwk".
        n_trials: optuna trials per stacker tuning (0: default LightGBM parameters).
        prompt_mix: target share per prompt name for weighting rows; empty for unweighted.
        seed: seeds the stacker, its tuning and the bootstrap.
        text_features: give the stacker `TextFeaturizer`'s features of `texts` (when texts are given).
        prompt_features: give the stacker the essay's prompt cluster (one 0/1 column per cluster) and every
            prediction and text feature standardised within the cluster, so it can score each prompt on its
            own scale. The clusters come from a `PromptAssigner` fitted on `texts` and
            `oofs.folds["prompt_cluster"]` (no score is used), which 05_infer applies to the test essays; the
            per-cluster means and deviations (`EnsembleResult.prompt_stats`, no score used either) are taken
            over all train rows and reused for the test essays. Needs `texts`.
        n_draws, level: bootstrap resamples and interval level of the intervals and of the selection rule.
        selection: "noise_aware", "best" or "simplest" (`select_method`), for the method and the target weight.
    """
    base = (prompt_mix_weights(oofs.folds["prompt_name"].to_numpy(), prompt_mix) if prompt_mix
            else np.ones(len(oofs.y)))
    features = StackerInputs.fit(oofs, texts, target.by_origin, prompt_features, text_features, seed,
                                 assign_prompts=target.by_prompt)
    rows = Rows(y=oofs.y, folds=oofs.fold.astype(np.int64), other=oofs.other, base=base, prompt=features.prompts)
    target = dataclasses.replace(target, rule=selection, n_draws=n_draws, level=level, seed=seed)
    if target.select_on == "other" and np.unique(rows.y[rows.other]).size < 2:
        log.warning("ensemble.target=%s: too few other-origin rows to fit or select on; using all rows", target.mode)
        target = dataclasses.replace(target, mode="all")
    P = pd.DataFrame(check_prediction_matrix(oofs.matrix()), columns=oofs.names)
    n_folds = np.unique(rows.folds).size
    methods = {}
    for name, kind in COMBINERS.items():
        if n_folds < kind.min_folds:
            log.warning("%s skipped: its nested evaluation needs at least %d folds, there are %d", name,
                        kind.min_folds, n_folds)
            continue
        if kind.needs_prompt_features and not prompt_features:
            log.info("%s skipped: it blends within the prompt clusters of ensemble.prompt_features, which is off", name)
            continue
        proto = kind.configured(objective=stacker_objective, n_trials=n_trials, seed=seed)
        methods[name] = evaluate_method(name, features.X if kind.uses_features else P, rows, target, proto)

    scores = {name: m.nested_scores for name, m in methods.items()} | model_scores(oofs, rows, target)
    boots = bootstraps(scores, rows, target, n_draws, level, seed)
    all_rows = {name: m.figures["qwk_nested"] for name, m in methods.items()}
    selected, reason = select_method(methods, boots["target"], selection, all_rows)
    intervals = interval_table(boots, selected)
    for m in methods.values():
        log.info("%-8s nested QWK %.4f (other-origin %s), in-sample %.4f, target weight %s", m.name,
                 m.figures["qwk_nested"], _fmt(m.figures["qwk_nested_other"]), m.figures["qwk_insample"],
                 m.extra["target_weight"])
    log.info("selected %s by nested QWK on %s rows: %s", selected, target.select_on, reason)
    metrics = _metrics(methods, selected, reason, target, intervals, oofs, bool(prompt_mix), n_draws, level)
    if features.assigner is not None:
        metrics["prompt_assigner_agreement"] = features.agreement
    return EnsembleResult(methods, selected, features.featurizer, list(features.X.columns), metrics,
                          features.assigner, features.prompt_stats, frontier_table(methods, rows), intervals)


def _metrics(methods: Mapping[str, MethodResult], selected: str, reason: str, target: Target, intervals: pd.DataFrame,
             oofs: OOFSet, weighted: bool, n_draws: int, level: float) -> dict[str, Any]:
    """04_ensemble's metrics.json: the selection, every method's figures and the intervals."""
    return {
        "selected": selected,
        "selection_reason": reason,
        "target": target.mode if isinstance(target.mode, str) else float(target.mode),
        "select_on": target.select_on,
        "by_origin": target.by_origin,
        "by_prompt": target.by_prompt,
        "target_weight": methods[selected].extra["target_weight"],
        "target_weight_reason": methods[selected].extra["target_weight_reason"],
        "selection_rule": target.rule,
        "qwk_nested": methods[selected].figures["qwk_nested"],
        "qwk_nested_other": methods[selected].figures["qwk_nested_other"],
        "methods": {name: {**m.figures, "target_weight": m.extra["target_weight"]} for name, m in methods.items()},
        "intervals": {"level": level, "draws": n_draws,
                      "rows": intervals.replace({np.nan: None}).to_dict(orient="records")},
        "models": oofs.names,
        "n_rows": len(oofs.y),
        "n_other": int(oofs.other.sum()),
        "weighted_by_prompt_mix": weighted,
    }


@dataclass
class StackerInputs:
    """The stacker's features of the train rows, and what 05_infer needs to build them for test essays."""

    X: pd.DataFrame
    featurizer: TextFeaturizer | None = None
    assigner: PromptAssigner | None = None
    prompt_stats: PromptStats | None = None
    agreement: float | None = None  # share of train essays the assigner puts in 00_prepare's cluster
    prompts: np.ndarray | None = None  # the assigner's cluster of every train essay

    @classmethod
    def fit(cls, oofs: OOFSet, texts: list[str] | None, by_origin: bool, prompt_features: bool, text_features: bool,
            seed: int, assign_prompts: bool = False) -> StackerInputs:
        """Predictions, class probabilities, the origin (`by_origin`), text features (`text_features` and texts
        given) and prompt features (`prompt_features`: needs texts); see `build_ensemble`. The prompt assigner is
        fitted for prompt features and for per-prompt thresholds (`assign_prompts`)."""
        featurizer, text_frame = None, None
        if texts is not None and text_features:
            featurizer = TextFeaturizer().fit(texts)
            text_frame = featurizer.transform(texts)
        origin = oofs.other.astype(np.float64) if by_origin else None
        X = stacker_features(oofs.preds, oofs.probs, text_frame, origin_other=origin)
        if not (prompt_features or assign_prompts):
            return cls(X, featurizer)
        if texts is None:
            raise ValueError("build_ensemble: prompt_features and per-prompt thresholds need the train texts")
        assigner = PromptAssigner(seed=seed).fit(texts, oofs.folds["prompt_cluster"].to_numpy())
        prompts = assigner.predict(texts)
        agreement = float(np.mean(prompts == oofs.folds["prompt_cluster"].to_numpy()))
        log.info("prompt assigner: %d clusters, agrees with 00_prepare's clusters on %.1f%% of the train essays",
                 len(assigner.classes_), 100 * agreement)
        if not prompt_features:
            return cls(X, featurizer, assigner, None, agreement, prompts)
        prompt_stats = fit_prompt_stats(X, prompts, assigner.classes_)
        X = stacker_features(oofs.preds, oofs.probs, text_frame, prompts, prompt_stats, origin)
        return cls(X, featurizer, assigner, prompt_stats, agreement, prompts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
