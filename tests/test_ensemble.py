"""Tests for the combiners of common/ensemble/: the registry (combiners.py), the blenders (blenders.py), the QWK
surrogate (surrogate.py), the LightGBM stacker (stacker.py) and its tuning (tuning.py), and the prompt-mix weights
(target.py)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from common.core.artifact_checks import ENSEMBLE_FILE, Problems
from common.ensemble.blenders import GreedyBlender, MeanBlender, PromptBlender, ScipyBlender
from common.ensemble.combiners import COMBINERS
from common.ensemble.stacker import LGBMStacker
from common.ensemble.surrogate import qwk_objective, qwk_surrogate
from common.ensemble.target import prompt_mix_weights
from common.ensemble.tuning import tune_stacker
from common.scoring.metrics import qwk
from common.scoring.nested import Chain
from common.scoring.thresholds import ThresholdSearcher, round_scores

SCORE_MIX = [0.07, 0.27, 0.36, 0.23, 0.06, 0.01]


def make_models(n: int = 1500, seed: int = 0, n_folds: int = 5):
    """Columns: a good model, a mediocre one, and two pure-noise models."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1, 7), size=n, p=SCORE_MIX)
    good = 0.8 * y + 0.6 + rng.normal(0, 0.45, n)
    mediocre = 0.8 * y + 0.6 + rng.normal(0, 1.2, n)
    noise = rng.normal(2.9, 1.0, size=(n, 2))
    P = np.column_stack([good, mediocre, noise])
    folds = np.arange(n) % n_folds
    rng.shuffle(folds)
    return P, y, folds


def stacker_data(n: int = 600, seed: int = 1):
    P, y, folds = make_models(n=n, seed=seed, n_folds=4)
    X = pd.DataFrame(P, columns=["good", "mediocre", "noise_a", "noise_b"])
    return X, y, folds


def fast_stacker(objective: str = "regression") -> LGBMStacker:
    return LGBMStacker(objective=objective, n_estimators=150, early_stopping_rounds=15, seed=3, num_threads=1)


def test_prompt_mix_weights_reach_target_mix() -> None:
    clusters = np.array(["a"] * 70 + ["b"] * 20 + ["c"] * 10)
    weights = prompt_mix_weights(clusters, {"a": 1, "b": 1, "c": 2})
    assert weights.sum() == pytest.approx(len(clusters))
    for name, share in {"a": 0.25, "b": 0.25, "c": 0.5}.items():
        assert weights[clusters == name].sum() / weights.sum() == pytest.approx(share)
    assert np.all(prompt_mix_weights(clusters, {"a": 1.0})[clusters != "a"] == 0)
    with pytest.raises(ValueError, match="no rows"):
        prompt_mix_weights(clusters, {"z": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        prompt_mix_weights(clusters, {"a": -1.0})


def test_mean_blender() -> None:
    P, y, _ = make_models(n=50)
    blender = MeanBlender().fit(P, y)
    np.testing.assert_allclose(blender.weights_, 0.25)
    np.testing.assert_allclose(blender.predict(P), P.mean(axis=1))


def test_greedy_blender_picks_the_good_model() -> None:
    P, y, _ = make_models()
    blender = GreedyBlender().fit(P, y)
    assert np.all(blender.weights_ >= 0)
    assert blender.weights_.sum() == pytest.approx(1.0)
    assert blender.weights_[2] == 0 and blender.weights_[3] == 0
    assert np.argmax(blender.weights_) == 0
    assert np.all(np.diff(blender.history_) > 0)


def test_greedy_blender_patience_keeps_the_best_prefix() -> None:
    P, y, _ = make_models()
    eager = GreedyBlender().fit(P, y)
    patient = GreedyBlender(patience=5).fit(P, y)
    assert patient.score_ >= eager.score_
    assert patient.counts_.sum() == len(patient.history_)
    assert patient.history_[-1] == max(patient.history_)


def test_greedy_blender_rounded_metric_and_weights() -> None:
    P, y, _ = make_models()
    weights = np.where(np.arange(len(y)) % 2 == 0, 1.0, 3.0)
    blender = GreedyBlender(metric="rounded", max_iter=5).fit(P, y, sample_weight=weights)
    assert blender.counts_.sum() <= 6
    assert blender.weights_.sum() == pytest.approx(1.0)
    assert blender.score_ == pytest.approx(qwk(y, round_scores(blender.predict(P)), sample_weight=weights))


@pytest.mark.parametrize("loss", ["mse", "qwk"])
def test_scipy_blender_weights_on_simplex(loss: str) -> None:
    P, y, _ = make_models()
    blender = ScipyBlender(loss=loss).fit(P, y)
    assert np.all(blender.weights_ >= 0)
    assert blender.weights_.sum() == pytest.approx(1.0)
    assert np.argmax(blender.weights_) == 0
    assert blender.weights_[2:].sum() < 0.1


def test_blenders_reject_bad_inputs() -> None:
    P, y, _ = make_models(n=100)
    bad = P.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GreedyBlender().fit(bad, y)
    with pytest.raises(ValueError, match="length mismatch"):
        ScipyBlender().fit(P[:-1], y)
    with pytest.raises(ValueError, match=r"outside 1\.\.6"):
        GreedyBlender().fit(P, np.where(y == 3, 0, y))
    blender = MeanBlender().fit(P, y)
    with pytest.raises(ValueError, match="model columns"):
        blender.predict(P[:, :2])


@pytest.mark.parametrize("weighted", [False, True])
def test_qwk_surrogate_gradient_and_hessian_match_finite_differences(weighted: bool) -> None:
    rng = np.random.default_rng(7)
    n = 40
    y = rng.choice(np.arange(1, 7), size=n, p=SCORE_MIX).astype(float)
    p = y + rng.normal(0, 0.8, n)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    total = n if w is None else w.sum()
    _, grad, hess = qwk_surrogate(y, p, w)
    step = 1e-5
    for i in range(0, n, 3):
        e = np.zeros(n)
        e[i] = step
        up, g_up, _ = qwk_surrogate(y, p + e, w)
        down, g_down, _ = qwk_surrogate(y, p - e, w)
        assert grad[i] == pytest.approx(total * (up - down) / (2 * step), rel=1e-5, abs=1e-8)
        assert hess[i] == pytest.approx((g_up[i] - g_down[i]) / (2 * step), rel=1e-4, abs=1e-7)


def test_qwk_surrogate_is_one_minus_continuous_kappa() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(1, 7, size=30).astype(float)
    p = y + rng.normal(0, 1, 30)
    observed = np.sum((p - y) ** 2)
    expected = np.sum((p[:, None] - y[None, :]) ** 2) / len(y)
    assert qwk_surrogate(y, p)[0] == pytest.approx(observed / expected)


def test_qwk_objective_hessian_is_positive_at_constant_start() -> None:
    import lightgbm as lgb

    y = np.random.default_rng(9).integers(1, 7, size=50).astype(float)
    data = lgb.Dataset(np.zeros((50, 1)), y).construct()
    grad, hess = qwk_objective(np.full(50, y.mean()), data)
    np.testing.assert_allclose(grad, qwk_surrogate(y, np.full(50, y.mean()))[1])
    assert np.all(hess > 0)


def test_stacker_fold_predictions_ignore_held_out_labels() -> None:
    X, y, folds = stacker_data()
    reference = fast_stacker().fit(X, y, folds=folds).oof_
    held = folds == 2
    scrambled_y = y.copy()
    scrambled_y[held] = np.random.default_rng(0).permutation(scrambled_y[held])[::-1]
    scrambled_y[held] = np.where(scrambled_y[held] == 6, 1, scrambled_y[held] + 1)
    scrambled = fast_stacker().fit(X, scrambled_y, folds=folds).oof_
    np.testing.assert_array_equal(scrambled[held], reference[held])
    assert not np.array_equal(scrambled[~held], reference[~held])


def test_stacker_never_trains_or_early_stops_on_the_held_out_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightgbm as lgb

    X, y, folds = stacker_data()
    X = X.assign(row=np.arange(len(y), dtype=float))
    seen: list[tuple[set[int], set[int]]] = []
    real_train = lgb.train

    def spy_train(params, train_set, *args, **kwargs):
        rows = {int(r) for r in np.asarray(train_set.data)[:, -1]}
        valid = {int(r) for r in np.asarray(kwargs["valid_sets"][0].data)[:, -1]}
        seen.append((rows, valid))
        return real_train(params, train_set, *args, **kwargs)

    monkeypatch.setattr(lgb, "train", spy_train)
    fast_stacker().fit(X, y, folds=folds)
    assert len(seen) == len(np.unique(folds))
    for fold, (train_rows, valid_rows) in zip(np.unique(folds), seen, strict=True):
        held = set(np.flatnonzero(folds == fold).tolist())
        assert not train_rows & held and not valid_rows & held
        assert not train_rows & valid_rows
        assert len(train_rows | valid_rows | held) == len(y)


@pytest.mark.parametrize("objective", ["regression", "qwk"])
def test_stacker_save_load_round_trip(tmp_path, objective: str) -> None:
    X, y, folds = stacker_data()
    stacker = fast_stacker(objective)
    oof = stacker.fit(X, y, folds=folds).oof_
    assert qwk(y, round_scores(oof)) > 0.6
    assert stacker.save(tmp_path) == {"params": {}, "objective": objective}
    assert sorted(p.name for p in (tmp_path / "stacker").iterdir()) == [
        "fold_0.txt", "fold_1.txt", "fold_2.txt", "fold_3.txt", "stacker.json"]
    loaded = LGBMStacker.load(tmp_path)
    new_rows = X.iloc[:50][list(reversed(X.columns))]  # column order does not matter for frames
    np.testing.assert_array_equal(loaded.predict(new_rows), stacker.predict(new_rows))
    np.testing.assert_array_equal(loaded.predict(X.to_numpy()), stacker.predict(X))
    with pytest.raises(ValueError, match="lacks feature columns"):
        loaded.predict(X.drop(columns="good"))


def test_stacker_is_deterministic_and_needs_three_folds() -> None:
    X, y, folds = stacker_data()
    np.testing.assert_array_equal(fast_stacker().fit(X, y, folds=folds).oof_, fast_stacker().fit(X, y, folds=folds).oof_)
    with pytest.raises(ValueError, match="at least 3 folds"):
        fast_stacker().fit(X, y, folds=folds % 2)
    with pytest.raises(ValueError, match="needs folds"):
        fast_stacker().fit(X, y)


def test_tune_stacker_returns_usable_params() -> None:
    X, y, folds = stacker_data(n=400)
    settings = {"n_estimators": 60, "early_stopping_rounds": 10, "num_threads": 1}
    best = tune_stacker(LGBMStacker(n_trials=4, seed=0), X, y, folds, **settings)
    assert set(best) == {"learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction",
                         "bagging_fraction", "lambda_l2"}
    assert best == tune_stacker(LGBMStacker(n_trials=4, seed=0), X, y, folds, **settings)
    LGBMStacker(params=best, n_estimators=60, early_stopping_rounds=10, num_threads=1).fit(X, y, folds=folds)
    tuned = LGBMStacker(n_trials=4, n_estimators=60, early_stopping_rounds=10).tune(X, y, folds)
    assert set(tuned.tuned_params) == set(best) and not hasattr(tuned, "models_")  # tuned, not fitted


def test_tuning_logs_its_figures_at_4_significant_digits(capfd, caplog) -> None:
    X, y, folds = stacker_data(n=200)
    with caplog.at_level(logging.INFO):
        tune_stacker(LGBMStacker(n_trials=2, seed=0), X, y, folds, n_estimators=20, early_stopping_rounds=5,
                     num_threads=1)
    printed = capfd.readouterr().err + caplog.text
    assert "tune_stacker: best inner-CV QWK" in printed
    assert not re.search(r"\d\.\d{6,}", printed), printed  # optuna's trial lines print floats in full


def test_stacker_feature_importance_ranks_the_good_model_first() -> None:
    X, y, folds = stacker_data()
    with pytest.raises(NotFittedError, match="fit or load"):
        fast_stacker().feature_importance()
    stacker = fast_stacker().fit(X, y, folds=folds)
    importance = stacker.feature_importance()
    assert set(importance) == set(X.columns) and sum(importance.values()) == pytest.approx(1.0)
    assert next(iter(importance)) == "good" and importance["good"] > importance["noise_a"] + importance["noise_b"]


# ------------------------------------------------------------------------------------------------
# The combiner interface, for every registered method


def combiner_inputs(name: str, n: int = 400):
    """(X, y, folds) of the kind the method takes: named model predictions, or stacker features."""
    P, y, folds = make_models(n=n, seed=4, n_folds=4)
    frame = pd.DataFrame(P, columns=["good", "mediocre", "noise_a", "noise_b"])
    return (frame.add_prefix("pred__") if COMBINERS[name].uses_features else frame), y, folds


def configured(name: str):
    combiner = COMBINERS[name].configured(objective="regression", n_trials=0, seed=1)
    return combiner.set_params(n_estimators=80, early_stopping_rounds=10) if name == "stacker" else combiner


def test_the_registry_lists_the_methods_simplest_first():
    assert list(COMBINERS) == ["mean", "greedy", "scipy", "per_prompt", "stacker"]
    assert [COMBINERS[name].uses_features for name in COMBINERS] == [False, False, False, True, True]
    assert COMBINERS["stacker"].out_of_fold and COMBINERS["stacker"].min_folds == 4
    assert [name for name in COMBINERS if COMBINERS[name].needs_prompt_features] == ["per_prompt"]
    assert configured("greedy").max_iter == 50


@pytest.mark.parametrize("name", list(COMBINERS))
def test_every_combiner_is_a_scikit_learn_estimator(name: str):
    combiner = configured(name)
    copy = clone(combiner)
    assert copy.get_params() == combiner.get_params()  # __init__ only stores its arguments
    X, y, folds = combiner_inputs(name)
    assert combiner.fit(X, y, folds=folds) is combiner
    assert not hasattr(copy, "fit_pred_")
    assert combiner.fit_pred_.shape == (len(y),)
    assert qwk(y, round_scores(combiner.fit_pred_)) > 0.5


@pytest.mark.parametrize("name", list(COMBINERS))
def test_every_combiner_saves_loads_and_predicts_the_same(name: str, tmp_path):
    X, y, folds = combiner_inputs(name)
    combiner = configured(name).fit(X, y, folds=folds)
    entry = combiner.save(tmp_path)
    json.dumps(entry)
    loaded = COMBINERS[name].load(tmp_path, json.loads(json.dumps(entry)))
    shuffled = X[list(reversed(X.columns))]  # columns are matched by name
    np.testing.assert_array_equal(loaded.predict(shuffled), combiner.predict(X))
    problems = Problems()
    COMBINERS[name].check(tmp_path, entry, ["good", "mediocre", "noise_a", "noise_b"], problems, "re-run")
    assert not problems


@pytest.mark.parametrize("name", ["mean", "greedy", "scipy"])
def test_a_blend_check_names_a_model_without_weight(name: str, tmp_path):
    X, y, _ = combiner_inputs(name)
    entry = configured(name).fit(X, y).save(tmp_path)
    problems = Problems()
    COMBINERS[name].check(tmp_path, entry, ["good", "mediocre", "noise_a", "noise_b", "new"], problems, "re-run")
    assert len(problems.lines) == 1 and problems.lines[0].startswith(f"{tmp_path / ENSEMBLE_FILE}: ")
    assert "no weight for every model" in problems.lines[0] and problems.unreadable


def test_the_stacker_check_names_a_missing_and_a_truncated_booster(tmp_path):
    X, y, folds = combiner_inputs("stacker")
    entry = configured("stacker").fit(X, y, folds=folds).save(tmp_path)
    (tmp_path / "stacker" / "fold_0.txt").unlink()
    cut = tmp_path / "stacker" / "fold_2.txt"
    cut.write_bytes(cut.read_bytes()[:200])
    problems = Problems()
    LGBMStacker.check(tmp_path, entry, [], problems, "re-run")
    assert problems.lines[0] == f"{tmp_path / 'stacker' / 'fold_0.txt'}: not found"
    assert problems.lines[1].startswith(f"{cut}: ") and "truncated or corrupt" in problems.lines[1]


def prompt_flip_inputs(n: int = 1200, seed: int = 5):
    """Stacker features of two models whose quality flips between two prompt clusters (model a sharp on cluster 0
    and vague on 1, model b the reverse), with the one-hot cluster columns 04 builds; (X, y, folds)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1, 7), size=n, p=[0.07, 0.27, 0.36, 0.23, 0.06, 0.01])
    cluster = rng.integers(0, 2, n)
    sharp, vague = y + rng.normal(0, 0.35, n), y + rng.normal(0, 1.5, n)
    other_sharp, other_vague = y + rng.normal(0, 0.35, n), y + rng.normal(0, 1.5, n)
    X = pd.DataFrame({"pred__a": np.where(cluster == 0, sharp, vague),
                      "pred__b": np.where(cluster == 0, other_vague, other_sharp),
                      "text__words": rng.normal(0, 1, n),  # stacker features it must leave alone
                      "prompt__0": (cluster == 0).astype(float), "prompt__1": (cluster == 1).astype(float)})
    return X, y, rng.permutation(np.arange(n) % 4)


def test_the_per_prompt_blend_weighs_each_model_where_it_is_good():
    X, y, folds = prompt_flip_inputs()
    blend = PromptBlender().fit(X, y)
    assert blend.columns_ == ["pred__a", "pred__b"]
    assert blend.weights_by_prompt_["0"][0] > 0.85 and blend.weights_by_prompt_["1"][1] > 0.85
    assert 0.3 < blend.weights_[0] < 0.7  # one set of weights for every row can only split the difference
    nested = Chain(X, y, folds, ThresholdSearcher, combiner=lambda train: PromptBlender()).nested()
    plain = Chain(X[["pred__a", "pred__b"]], y, folds, ThresholdSearcher, combiner=lambda train: ScipyBlender()).nested()
    assert qwk(y, nested.scores) > qwk(y, plain.scores) + 0.03
    # A cluster with fewer training rows than min_rows (each has about 600 here), and a row of no cluster, get the
    # all-rows weights.
    few = PromptBlender(min_rows=700).fit(X, y)
    assert few.weights_by_prompt_ == {}
    np.testing.assert_allclose(few.predict(X), X[["pred__a", "pred__b"]].to_numpy() @ few.weights_)
    unknown = X.assign(prompt__0=0.0, prompt__1=0.0)
    np.testing.assert_allclose(blend.predict(unknown), unknown[["pred__a", "pred__b"]].to_numpy() @ blend.weights_)


def test_the_per_prompt_blend_check_names_a_cut_entry(tmp_path):
    X, y, _ = prompt_flip_inputs()
    entry = PromptBlender().fit(X, y).save(tmp_path)
    assert set(entry["weights_by_prompt"]) == {"0", "1"}
    problems = Problems()
    del entry["weights_by_prompt"]["1"]["pred__b"]
    PromptBlender.check(tmp_path, entry, ["a", "b"], problems, "re-run")
    assert len(problems.lines) == 1 and "weights_by_prompt" in problems.lines[0] and problems.unreadable
