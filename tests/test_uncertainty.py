"""Bootstrap intervals (essays resampled within folds), per-origin thresholds and the test-time spread fix."""

import numpy as np
import pytest

from common.infer.inference import TestPredictions, correct_spread, spread
from common.scoring.metrics import qwk
from common.scoring.thresholds import GroupThresholds, ThresholdSearcher
from common.scoring.uncertainty import _qwk_per_draw, bootstrap_qwk, draw_counts


def test_draws_keep_every_fold_at_its_size():
    folds = np.repeat([0, 1, 2], [50, 30, 20])
    counts = draw_counts(folds, 200, seed=1)
    for fold, size in ((0, 50), (1, 30), (2, 20)):
        assert np.all(counts[:, folds == fold].sum(axis=1) == size)
    assert counts.std(axis=0).min() > 0  # rows are really resampled


def test_the_qwk_of_each_draw_is_the_qwk_of_that_resample():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 7, 300)
    s = np.clip(y + rng.integers(-1, 2, 300), 1, 6)
    counts = draw_counts(np.arange(300) % 4, 5, seed=2)
    per_draw = _qwk_per_draw(y - 1, s - 1, counts)
    for b in range(5):
        rows = np.repeat(np.arange(300), counts[b].astype(int))
        assert per_draw[b] == pytest.approx(qwk(y[rows], s[rows]))


def test_paired_differences_are_narrower_than_either_interval():
    rng = np.random.default_rng(1)
    y = rng.integers(1, 7, 2000)
    a = np.where(rng.random(2000) < 0.7, y, rng.integers(1, 7, 2000))
    b = np.where(rng.random(2000) < 0.1, rng.integers(1, 7, 2000), a)  # a with a few more errors
    boot = bootstrap_qwk(y, {"a": a, "b": b, "same": a}, np.arange(2000) % 5, n_draws=300, level=0.9)
    d = boot.difference("a", "b")
    low, high = boot.interval("a")
    assert d["low"] > 0 and d["high"] - d["low"] < (high - low) * 0.7
    assert boot.difference("a", "same") == {"diff": 0.0, "low": 0.0, "high": 0.0}
    other = bootstrap_qwk(y, {"a": a}, np.arange(2000) % 5, rows=np.arange(2000) < 500, n_draws=300)
    assert other.point["a"] == pytest.approx(qwk(y[:500], a[:500]))
    assert np.diff(other.interval("a")) > np.diff(boot.interval("a"))  # fewer rows, wider interval


def test_each_origin_gets_its_own_thresholds_where_it_is_calibrated_differently():
    rng = np.random.default_rng(2)
    n = 2000
    y = rng.integers(1, 7, n)
    group = np.where(np.arange(n) < 600, "other", "persuade")
    pred = y + rng.normal(0, 0.4, n) + np.where(group == "other", 0.8, 0.0)  # over-predicts other rows
    fitted = GroupThresholds().fit(pred, y, group)
    assert set(fitted.by_group_) == {"other", "persuade"}
    assert np.all(np.array(fitted.by_group_["other"]) > np.array(fitted.by_group_["persuade"]) + 0.4)
    shared = ThresholdSearcher().fit(pred, y).predict(pred)
    assert qwk(y, fitted.predict(pred, group)) > qwk(y, shared) + 0.02
    small = GroupThresholds(min_rows=700).fit(pred, y, group)
    assert set(small.by_group_) == {"persuade"} and small.thresholds_for("other") == small.shared_
    assert small.thresholds_for("unseen") == small.shared_


def test_prompt_groups_within_an_origin_fall_back_to_the_origin_then_to_the_shared_cut_points():
    rng = np.random.default_rng(4)
    n = 3000
    y = rng.integers(1, 7, n)
    prompt = np.arange(n) % 3
    origin = np.where(np.arange(n) < 2000, "other", "persuade")
    pred = y + rng.normal(0, 0.3, n) + np.array([-0.8, 0.0, 0.8])[prompt]  # each prompt on its own offset
    groups = np.char.add(np.char.add(origin, "|"), prompt.astype(str))
    fitted = GroupThresholds(min_rows=400).fit(pred, y, groups)
    assert set(fitted.by_group_) == {"other|0", "other|1", "other|2", "other", "persuade"}  # persuade|k: 333 rows
    low, high = np.array(fitted.thresholds_for("other|0")), np.array(fitted.thresholds_for("other|2"))
    assert np.all(high > low + 1.0)
    assert fitted.thresholds_for("persuade|1") == fitted.by_group_["persuade"]  # too few rows: the origin's
    assert fitted.thresholds_for("other|9") == fitted.by_group_["other"]  # an unseen prompt: the origin's
    assert fitted.thresholds_for("nobody|1") == fitted.shared_
    by_origin = GroupThresholds(min_rows=400).fit(pred, y, origin)
    assert qwk(y, fitted.predict(pred, groups)) > qwk(y, by_origin.predict(pred, origin)) + 0.03


def test_the_spread_correction_restores_a_single_fold_models_spread():
    rng = np.random.default_rng(3)
    signal = rng.normal(3, 1, 400)
    folds = signal + rng.normal(0, 0.6, (4, 400))
    s = spread(folds)
    assert s["factor"] > 1.1 and s["fold_std"] == pytest.approx(np.sqrt(np.mean(folds.var(axis=1))))
    mean = folds.mean(axis=0)
    fixed = correct_spread(TestPredictions({"m": mean}, {}, {}, {"m": folds})).preds["m"]
    assert fixed.std() == pytest.approx(s["fold_std"]) and fixed.mean() == pytest.approx(mean.mean())
    assert np.all(np.argsort(fixed) == np.argsort(mean))  # the ranking is untouched
    few = correct_spread(TestPredictions({"m": mean[:10]}, {}, {}, {"m": folds[:, :10]})).preds["m"]
    np.testing.assert_array_equal(few, mean[:10])  # too few essays to estimate a factor
