"""Tests for common/scoring/thresholds.py: applying cut points, the exact search, and leak-free nested estimates."""

from __future__ import annotations

import json
import math
from itertools import pairwise, product

import numpy as np
import pytest
from scipy.optimize import minimize

from common.scoring.metrics import qwk
from common.scoring.oof import threshold_report
from common.scoring.thresholds import ThresholdSearcher, apply_thresholds, round_scores

SCORE_MIX = [0.07, 0.27, 0.36, 0.23, 0.06, 0.01]


def make_oof(n: int = 2000, seed: int = 0, noise: float = 0.6, n_folds: int = 5):
    """Scores with the competition's mix and shrunk, noisy continuous predictions."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1, 7), size=n, p=SCORE_MIX)
    preds = 0.7 * y + 0.9 + rng.normal(0.0, noise, size=n)
    folds = rng.integers(0, n_folds, size=n)
    return preds, y, folds


def test_apply_thresholds_boundaries_and_extremes() -> None:
    t = [1.5, 2.5, 3.5, 4.5, 5.5]
    preds = np.array([-1e12, 1.4999, 1.5, 2.0, 3.5, 5.49, 5.5, 1e12, -np.inf, np.inf])
    np.testing.assert_array_equal(apply_thresholds(preds, t), [1, 1, 2, 2, 4, 5, 6, 6, 1, 6])


def test_apply_thresholds_rejects_nan_and_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="NaN"):
        apply_thresholds(np.array([1.0, np.nan]), [1.5, 2.5, 3.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="sorted"):
        apply_thresholds(np.array([1.0]), [1.5, 3.5, 2.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="shape"):
        apply_thresholds(np.array([1.0]), [1.5, 2.5])


def test_round_scores_clips() -> None:
    np.testing.assert_array_equal(round_scores(np.array([-3.0, 1.49, 2.5, 3.51, 9.0])), [1, 1, 2, 4, 6])


def test_searcher_thresholds_strictly_increasing_and_scores_in_range() -> None:
    for seed in range(5):
        preds, y, _ = make_oof(n=800, seed=seed, noise=1.5)
        searcher = ThresholdSearcher().fit(preds, y)
        assert searcher.thresholds_.shape == (5,)
        assert np.all(np.diff(searcher.thresholds_) > 0)
        extreme = np.concatenate([preds, [-1e9, 1e9, -np.inf, np.inf]])
        scores = searcher.predict(extreme)
        assert scores.min() >= 1 and scores.max() <= 6


def test_searcher_score_matches_qwk_of_its_predictions() -> None:
    preds, y, _ = make_oof(seed=1)
    searcher = ThresholdSearcher().fit(preds, y)
    assert searcher.score_ == pytest.approx(qwk(y, searcher.predict(preds)), abs=1e-12)


def test_searcher_beats_or_equals_rounding_in_sample() -> None:
    for seed in range(5):
        preds, y, _ = make_oof(seed=seed)
        searcher = ThresholdSearcher().fit(preds, y)
        assert qwk(y, searcher.predict(preds)) >= qwk(y, round_scores(preds)) - 1e-12


def test_searcher_matches_or_beats_nelder_mead() -> None:
    preds, y, _ = make_oof(n=3000, seed=3)
    ours = qwk(y, ThresholdSearcher().fit(preds, y).predict(preds))
    result = minimize(lambda t: -qwk(y, apply_thresholds(preds, np.sort(t))), [1.5, 2.5, 3.5, 4.5, 5.5],
                      method="Nelder-Mead")
    assert ours >= -result.fun - 1e-12


def test_searcher_is_exact_on_a_tiny_problem() -> None:
    """Brute force over every assignment of cut indices: the coordinate search reaches the optimum here."""
    rng = np.random.default_rng(4)
    y = rng.choice(np.arange(1, 7), size=9, p=SCORE_MIX)
    preds = y + rng.normal(0, 1.0, size=9)
    values = np.sort(preds)
    candidates = np.concatenate(([values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]))
    best = max(qwk(y, apply_thresholds(preds, np.array(c))) for c in product(candidates, repeat=5)
               if all(a <= b for a, b in pairwise(c)))
    assert ThresholdSearcher().fit(preds, y).score_ == pytest.approx(best, abs=1e-12)


def test_searcher_is_deterministic() -> None:
    preds, y, _ = make_oof(seed=5)
    first = ThresholdSearcher().fit(preds, y).thresholds_
    second = ThresholdSearcher().fit(preds, y).thresholds_
    np.testing.assert_array_equal(first, second)


def test_searcher_sample_weight_equals_repeated_rows() -> None:
    preds, y, _ = make_oof(n=500, seed=6)
    reps = np.random.default_rng(6).integers(1, 4, size=len(y))
    weighted = ThresholdSearcher(polish=False).fit(preds, y, sample_weight=reps)
    repeated = ThresholdSearcher(polish=False).fit(np.repeat(preds, reps), np.repeat(y, reps))
    assert weighted.score_ == pytest.approx(repeated.score_, abs=1e-12)


def test_searcher_handles_constant_inputs() -> None:
    searcher = ThresholdSearcher().fit(np.full(10, 3.0), np.array([1, 2, 3, 4, 5, 6, 3, 3, 2, 4]))
    assert np.all(np.diff(searcher.thresholds_) > 0)
    searcher = ThresholdSearcher().fit(np.linspace(1, 6, 10), np.full(10, 3))
    assert np.all(np.diff(searcher.thresholds_) > 0)


@pytest.mark.parametrize(
    ("preds", "y", "message"),
    [
        ([1.0, np.nan, 3.0], [1, 2, 3], "NaN"),
        ([1.0, 2.0], [1, 2, 3], "length mismatch"),
        ([1.0, 2.0, 3.0], [1, 2, 9], "outside 1..6"),
    ],
)
def test_searcher_rejects_bad_inputs(preds: list, y: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdSearcher().fit(np.array(preds), np.array(y))


def test_threshold_report_is_json_serialisable_and_complete() -> None:
    preds, y, folds = make_oof(n=1200, seed=10)
    rng = np.random.default_rng(10)
    groups = {"prompt_cluster": rng.integers(0, 3, size=len(y)), "origin": rng.choice(["persuade", "other"], len(y))}
    report = threshold_report(preds, y, folds, groups)
    decoded = json.loads(json.dumps(report))
    assert set(decoded) >= {"thresholds", "qwk_rounded", "qwk_insample", "qwk_nested", "per_fold", "per_group"}
    assert len(decoded["thresholds"]) == 5
    assert set(decoded["per_group"]) == {"prompt_cluster", "origin"}
    assert set(decoded["per_group"]["origin"]) == {"persuade", "other"}
    assert set(decoded["per_fold"]) == {str(f) for f in np.unique(folds)}
    assert report["qwk_insample"] >= report["qwk_rounded"] - 1e-12
    assert all(isinstance(v, float) and math.isfinite(v) for v in decoded["per_fold"].values())
