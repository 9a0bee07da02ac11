"""Tests for common/scoring/nested.py: every chain (thresholds alone, blend -> thresholds, stacker -> thresholds) is fitted
on the other folds only and never sees the held-out labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.ensemble.blenders import GreedyBlender, MeanBlender
from common.ensemble.stacker import LGBMStacker
from common.scoring.nested import Chain, nested_qwk, thresholds_per_fold
from common.scoring.thresholds import GroupThresholds, ThresholdSearcher
from tests.test_ensemble import make_models, stacker_data
from tests.test_thresholds import SCORE_MIX, make_oof


class SpySearcher(ThresholdSearcher):
    """Records every (preds, y) it is fitted on."""

    calls: list[tuple[np.ndarray, np.ndarray]] = []  # noqa: RUF012

    def fit(self, preds, y, sample_weight=None):  # type: ignore[override]
        SpySearcher.calls.append((np.asarray(preds).copy(), np.asarray(y).copy()))
        return super().fit(preds, y, sample_weight)


class SpyBlender(GreedyBlender):
    """Records the rows (first column values) it is fitted on."""

    fitted_on: list[np.ndarray] = []  # noqa: RUF012

    def fit(self, P, y, sample_weight=None, folds=None):  # type: ignore[override]
        SpyBlender.fitted_on.append(np.asarray(P)[:, 0].copy())
        return super().fit(P, y, sample_weight)


def blend_chain(P, y, folds, factory=lambda: GreedyBlender(max_iter=5)) -> Chain:
    return Chain(P, y, folds, ThresholdSearcher, combiner=lambda train: factory())


def test_thresholds_are_fitted_on_other_folds_only() -> None:
    preds, y, folds = make_oof(n=600, seed=7)
    preds = preds + np.arange(len(preds)) * 1e-9  # make every prediction identify its row
    SpySearcher.calls = []
    Chain(preds, y, folds, SpySearcher).nested()
    assert len(SpySearcher.calls) == len(np.unique(folds))
    for fold, (fit_preds, _) in zip(np.unique(folds), SpySearcher.calls, strict=True):
        np.testing.assert_array_equal(np.sort(fit_preds), np.sort(preds[folds != fold]))


def test_nested_thresholds_ignore_held_out_labels() -> None:
    preds, y, folds = make_oof(n=1500, seed=8)
    reference = Chain(preds, y, folds, ThresholdSearcher).nested()
    rng = np.random.default_rng(0)
    for fold in np.unique(folds):
        garbage = y.copy()
        held = folds == fold
        garbage[held] = rng.integers(1, 7, size=held.sum())
        scrambled = Chain(preds, garbage, folds, ThresholdSearcher).nested()
        np.testing.assert_array_equal(scrambled.scores[held], reference.scores[held])
        assert thresholds_per_fold(scrambled.fits)[str(fold)] == thresholds_per_fold(reference.fits)[str(fold)]
        assert not np.array_equal(scrambled.scores[~held], reference.scores[~held])  # the labels are used elsewhere


def test_nested_qwk_is_not_above_in_sample_on_noise() -> None:
    rng = np.random.default_rng(9)
    y = rng.choice(np.arange(1, 7), size=1000, p=SCORE_MIX)
    preds = rng.normal(3.0, 1.0, size=1000)  # no signal: in-sample thresholds overfit, nested does not
    folds = rng.integers(0, 5, size=1000)
    figures = nested_qwk(y, folds, Chain(preds, y, folds, ThresholdSearcher).nested())
    assert figures["qwk_nested"] < ThresholdSearcher().fit(preds, y).score_
    assert abs(figures["qwk_nested"]) < 0.1
    assert set(json.loads(json.dumps(figures))) == {"qwk_nested", "per_fold", "thresholds_per_fold"}
    assert set(figures["per_fold"]) == {str(f) for f in range(5)}


def test_the_chain_checks_its_input_once_at_the_boundary() -> None:
    preds, y, _ = make_oof(n=100)
    with pytest.raises(ValueError, match="two distinct fold"):
        Chain(preds, y, np.zeros(100, dtype=int), ThresholdSearcher)
    with pytest.raises(ValueError, match="NaN"):
        Chain(np.where(np.arange(100) == 3, np.nan, preds), y, np.arange(100) % 2, ThresholdSearcher)
    with pytest.raises(ValueError, match="length mismatch"):
        Chain(preds[:-1], y, np.arange(100) % 2, ThresholdSearcher, combiner=lambda train: MeanBlender())
    with pytest.raises(ValueError, match="groups must have shape"):
        Chain(preds, y, np.arange(100) % 2, GroupThresholds, groups=np.zeros(99))


def test_a_blend_is_fitted_on_other_folds_only() -> None:
    P, y, folds = make_models(n=600)
    P[:, 0] += np.arange(len(y)) * 1e-9  # identify rows by the first column
    SpyBlender.fitted_on = []
    chain = blend_chain(P, y, folds, lambda: SpyBlender(max_iter=3))
    chain.nested()
    n_folds = len(np.unique(folds))
    assert len(SpyBlender.fitted_on) == n_folds
    for fold, column in zip(np.unique(folds), SpyBlender.fitted_on, strict=True):
        np.testing.assert_array_equal(np.sort(column), np.sort(P[folds != fold, 0]))
    chain.nested()  # the same folds again: the cached fits are reused
    assert len(SpyBlender.fitted_on) == n_folds
    chain.nested(sample_weight=np.where(np.arange(len(y)) % 2 == 0, 1.0, 2.0))  # other weights: fitted again
    assert len(SpyBlender.fitted_on) == 2 * n_folds


def test_a_nested_blend_ignores_held_out_labels() -> None:
    P, y, folds = make_models(n=800)
    reference = blend_chain(P, y, folds).nested()
    rng = np.random.default_rng(5)
    for fold in np.unique(folds)[:2]:
        held = folds == fold
        garbage = y.copy()
        garbage[held] = rng.integers(1, 7, size=held.sum())
        scrambled = blend_chain(P, garbage, folds).nested()
        np.testing.assert_array_equal(scrambled.scores[held], reference.scores[held])
        np.testing.assert_array_equal(scrambled.pred[held], reference.pred[held])
        key = str(fold)
        np.testing.assert_array_equal(scrambled.fits[key].combiner.weights_, reference.fits[key].combiner.weights_)


def test_greedy_nested_beats_mean_when_models_are_noise() -> None:
    P, y, folds = make_models()
    greedy = nested_qwk(y, folds, blend_chain(P, y, folds, GreedyBlender).nested())
    mean = nested_qwk(y, folds, blend_chain(P, y, folds, MeanBlender).nested())
    assert greedy["qwk_nested"] > mean["qwk_nested"]


def test_a_nested_stacker_ignores_held_out_labels_and_thresholds_its_inner_oof() -> None:
    X, y, folds = stacker_data()

    def chain(labels: np.ndarray) -> Chain:
        return Chain(X, labels, folds, ThresholdSearcher, combiner=lambda train: LGBMStacker(
            n_estimators=80, early_stopping_rounds=10, seed=3))

    reference = chain(y).nested()
    held = folds == 1
    scrambled_y = y.copy()
    scrambled_y[held] = np.where(y[held] == 6, 1, y[held] + 1)
    scrambled = chain(scrambled_y).nested()
    np.testing.assert_array_equal(scrambled.pred[held], reference.pred[held])
    np.testing.assert_array_equal(scrambled.scores[held], reference.scores[held])
    assert not np.array_equal(scrambled.pred[~held], reference.pred[~held])
    fit = reference.fits["1"]
    np.testing.assert_array_equal(fit.train_pred, fit.combiner.oof_)  # thresholds on out-of-fold predictions


def test_weights_chosen_per_fold_and_within_restrict_every_fit() -> None:
    preds, y, folds = make_oof(n=800, seed=3, n_folds=4)
    chosen = []

    def weights(train: np.ndarray) -> np.ndarray:
        chosen.append(train.copy())
        return np.where(train, 1.0, 0.0) + 1.0

    within = folds != 3
    nested = Chain(preds, y, folds, ThresholdSearcher).nested(weights, within=within)
    assert len(chosen) == 3 and not any((train & ~within).any() for train in chosen)
    assert set(nested.fits) == {"0", "1", "2"}
    assert np.all(nested.scores[~within] == 0) and np.all(nested.scores[within] >= 1)


def test_a_chain_on_a_frame_selects_rows_by_mask() -> None:
    P, y, folds = make_models(n=300, n_folds=3)
    frame = pd.DataFrame(P, columns=["a", "b", "c", "d"])
    from_frame = blend_chain(frame, y, folds).nested()
    from_array = blend_chain(P, y, folds).nested()
    np.testing.assert_array_equal(from_frame.pred, from_array.pred)
    assert list(from_frame.fits["0"].combiner.feature_names_in_) == ["a", "b", "c", "d"]
