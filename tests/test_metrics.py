"""Tests for common/scoring/metrics.py: QWK against scikit-learn, confusion matrices, per-group QWK, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from common.scoring.metrics import confusion, qwk, qwk_by_group, qwk_from_confusion

LABELS = np.arange(1, 7)


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(2, 300))
    probs = rng.dirichlet(np.ones(6) * rng.uniform(0.2, 3.0))
    y_true = rng.choice(LABELS, size=n, p=probs)
    noise = rng.normal(0, rng.uniform(0.0, 2.0), size=n)
    y_pred = np.clip(np.rint(y_true + noise), 1, 6).astype(int)
    return y_true, y_pred


def test_qwk_matches_sklearn_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        y_true, y_pred = _random_case(rng)
        expected = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=LABELS)
        if np.isnan(expected):
            continue
        assert qwk(y_true, y_pred) == pytest.approx(expected, abs=1e-10)


def test_qwk_matches_sklearn_with_sample_weight() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        y_true, y_pred = _random_case(rng)
        weights = rng.uniform(0.0, 3.0, size=len(y_true))
        expected = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=LABELS, sample_weight=weights)
        if np.isnan(expected):
            continue
        assert qwk(y_true, y_pred, sample_weight=weights) == pytest.approx(expected, abs=1e-10)


def test_integer_weights_equal_repeated_rows() -> None:
    rng = np.random.default_rng(2)
    y_true, y_pred = _random_case(rng)
    reps = rng.integers(0, 4, size=len(y_true))
    reps[0] = 1
    assert qwk(y_true, y_pred, sample_weight=reps) == pytest.approx(
        qwk(np.repeat(y_true, reps), np.repeat(y_pred, reps)), abs=1e-12
    )


def test_perfect_and_degenerate_cases() -> None:
    y = np.array([1, 2, 3, 4, 5, 6])
    assert qwk(y, y) == pytest.approx(1.0)
    assert qwk(y, np.full(6, 3)) == 0.0
    assert qwk(np.full(5, 4), np.full(5, 4)) == 0.0  # sklearn gives NaN here
    assert qwk(np.full(5, 4), np.array([1, 2, 3, 4, 5])) == 0.0


def test_float_labels_with_whole_values_are_accepted() -> None:
    assert qwk(np.array([1.0, 2.0, 3.0]), np.array([1, 2, 3])) == pytest.approx(1.0)


def test_confusion_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true, y_pred = _random_case(rng)
    expected = confusion_matrix(y_true, y_pred, labels=LABELS)
    got = confusion(y_true, y_pred)
    assert got.shape == (6, 6)
    np.testing.assert_array_equal(got, expected)
    assert qwk_from_confusion(got) == pytest.approx(qwk(y_true, y_pred))


def test_qwk_by_group_reports_none_for_single_label_groups() -> None:
    y_true = np.array([1, 2, 3, 4, 5, 6, 3, 3, 3])
    y_pred = np.array([1, 2, 3, 4, 6, 5, 3, 4, 2])
    groups = np.array(["a"] * 6 + ["b"] * 3)
    result = qwk_by_group(y_true, y_pred, groups)
    assert list(result) == ["a", "b"]
    assert result["a"] == pytest.approx(qwk(y_true[:6], y_pred[:6]))
    assert result["b"] is None


def test_qwk_by_group_integer_groups_are_string_keys() -> None:
    y = np.array([1, 2, 3, 1, 2, 3])
    result = qwk_by_group(y, y, np.array([0, 0, 0, 1, 1, 1]))
    assert result == {"0": pytest.approx(1.0), "1": pytest.approx(1.0)}


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([1, 2, 7], [1, 2, 3], "outside 1..6"),
        ([1, 2, 3], [0, 2, 3], "outside 1..6"),
        ([1, 2, np.nan], [1, 2, 3], "NaN"),
        ([1, 2, 3.5], [1, 2, 3], "non-integer"),
        ([1, 2, 3], [1, 2], "length mismatch"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise_value_error(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        qwk(np.array(y_true), np.array(y_pred))


def test_bad_sample_weight_raises() -> None:
    with pytest.raises(ValueError, match="sample_weight"):
        qwk([1, 2, 3], [1, 2, 3], sample_weight=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        qwk([1, 2, 3], [1, 2, 3], sample_weight=[1.0, 1.0])
