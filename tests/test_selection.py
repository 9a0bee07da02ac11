"""Stage 04's logic: nested scoring of blends and the stacker never uses held-out labels."""

import numpy as np
import pandas as pd
import pytest

from common.ensemble.blenders import ScipyBlender
from common.ensemble.features import fit_prompt_stats, stacker_features
from common.ensemble.search import build_ensemble, evaluate_method, frontier_table
from common.ensemble.selection import COMPLEXITY, select_method
from common.ensemble.target import Rows, Target
from common.scoring.oof import OOFSet
from common.scoring.uncertainty import bootstrap_qwk
from common.tools.synthetic import origin_shift_oofs


def synthetic_oofs(seed: int = 0, n: int = 400) -> OOFSet:
    rng = np.random.default_rng(seed)
    y = rng.choice([1, 2, 3, 4, 5, 6], size=n, p=[0.07, 0.27, 0.36, 0.23, 0.06, 0.01])
    folds = pd.DataFrame({
        "essay_id": [f"e{i}" for i in range(n)],
        "score": y,
        "fold": rng.permutation(np.arange(n) % 4),
        "prompt_cluster": rng.integers(0, 3, n),
        "origin": np.where(rng.random(n) < 0.7, "persuade", "other"),
    })
    folds["prompt_name"] = folds["prompt_cluster"].map({0: "Venus", 1: "Mars", 2: "Cars"})
    shared = rng.normal(0, 0.4, n)
    preds = {
        "good": y + shared + rng.normal(0, 0.4, n),
        "fair": y + shared + rng.normal(0, 0.7, n),
        "noise": rng.normal(3, 1, n),
    }
    logits = -((np.arange(1, 7)[None, :] - preds["fair"][:, None]) ** 2)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    prob_frame = pd.DataFrame(probs, columns=[f"prob_{k}" for k in range(1, 7)])
    return OOFSet(folds=folds, preds=preds, probs={"fair": prob_frame})


TOPIC_WORDS = {0: "venus planet", 1: "mars rover", 2: "driverless cars"}


def texts_for(oofs: OOFSet) -> list[str]:
    """Essays whose length follows the score and whose topic words follow the prompt cluster."""
    clusters = oofs.folds["prompt_cluster"].to_numpy()
    return [f"{TOPIC_WORDS[c]} " + ("word " * int(10 * s + 5)) + "end." for s, c in zip(oofs.y, clusters, strict=True)]


def run(oofs: OOFSet, texts=None, **kwargs):
    options = {"target": Target("all", (1.0,), False), "stacker_objective": "regression", "n_trials": 2,
               "prompt_mix": {}, "seed": 1, "n_draws": 200}
    options.update(kwargs)
    return build_ensemble(oofs, texts, **options)


@pytest.fixture(scope="module")
def result():
    oofs = synthetic_oofs()
    return oofs, run(oofs, texts_for(oofs))


def test_every_method_is_scored_on_all_and_other_rows(result):
    _, res = result
    assert set(res.methods) == {"mean", "greedy", "scipy", "stacker"}
    for m in res.methods.values():
        for key in ("qwk_nested", "qwk_nested_other", "qwk_insample", "qwk_insample_other"):
            assert 0.0 < m.figures[key] <= 1.0
        assert m.nested_scores.min() >= 1 and m.nested_scores.max() <= 6
        assert np.all(np.diff(m.thresholds) > 0)
    scored = [k for k in COMPLEXITY if k in res.methods]  # per_prompt needs prompt features, off here
    best = max(scored, key=lambda k: res.methods[k].figures["qwk_nested"])  # ties to the simpler
    assert res.metrics["selected"] == best  # selection=best on target=all: the best nested QWK on all rows


def test_greedy_blend_ignores_the_noise_model_and_beats_the_mean(result):
    _, res = result
    greedy = res.methods["greedy"]
    assert greedy.combiner.model_weights["noise"] == 0.0
    assert greedy.figures["qwk_nested"] >= res.methods["mean"].figures["qwk_nested"]


def test_in_sample_figures_are_at_least_the_nested_ones(result):
    _, res = result
    for name in ("greedy", "scipy", "stacker"):
        m = res.methods[name]
        assert m.figures["qwk_insample"] >= m.figures["qwk_nested"] - 0.005


def test_nested_predictions_never_use_the_held_out_labels():
    """Scrambling fold 0's labels must not move fold 0's nested predictions, for any method -- with the target
    weight chosen inside each training split and thresholds per origin (1,200 rows: origins big enough)."""
    oofs = synthetic_oofs(seed=3, n=1200)
    scrambled = OOFSet(folds=oofs.folds.copy(), preds=oofs.preds, probs=oofs.probs)
    held = (oofs.fold == 0)
    rng = np.random.default_rng(9)
    scrambled.folds.loc[held, "score"] = rng.permutation(oofs.folds.loc[held, "score"].to_numpy()[::-1])
    assert (scrambled.y[held] != oofs.y[held]).any()
    texts = texts_for(oofs)  # the same texts for both runs: only labels change
    target = Target("auto", (1.0, 8.0), True)
    a = run(oofs, texts, prompt_features=True, target=target)
    b = run(scrambled, texts, prompt_features=True, target=target)
    assert a.methods["mean"].extra["thresholds_by_origin"]  # origins did get their own thresholds
    assert "per_prompt" in a.methods and a.methods["per_prompt"].combiner.weights_by_prompt_  # blends per cluster
    for name in a.methods:
        np.testing.assert_allclose(a.methods[name].nested_pred[held], b.methods[name].nested_pred[held],
                                   err_msg=f"{name} used held-out labels")
        np.testing.assert_array_equal(a.methods[name].nested_scores[held], b.methods[name].nested_scores[held])
        assert a.methods[name].extra["target_weight_per_fold"]["0"] == b.methods[name].extra["target_weight_per_fold"]["0"]
        for weight in a.methods[name].frontier:
            np.testing.assert_array_equal(a.methods[name].frontier[weight][held], b.methods[name].frontier[weight][held])
    # ... while the other folds' predictions do depend on fold 0's labels (the test can see a change).
    assert not np.allclose(a.methods["stacker"].nested_pred[~held], b.methods["stacker"].nested_pred[~held])


def test_target_other_fits_on_other_origin_rows_only():
    """target=other: corpus rows weigh nothing, so scrambling their labels changes no held-out prediction."""
    oofs = synthetic_oofs(seed=4)
    scrambled = OOFSet(folds=oofs.folds.copy(), preds=oofs.preds, probs=oofs.probs)
    corpus = ~oofs.other
    scrambled.folds.loc[corpus, "score"] = np.random.default_rng(2).permutation(oofs.y[corpus])
    a = run(oofs, None, target=Target("other", (1.0,), False), n_trials=0)
    b = run(scrambled, None, target=Target("other", (1.0,), False), n_trials=0)
    assert a.metrics["select_on"] == "other" and a.metrics["target_weight"] == "other only"
    for name in ("mean", "greedy", "scipy"):
        np.testing.assert_array_equal(a.methods[name].nested_scores, b.methods[name].nested_scores)
    plain = run(oofs, None, target=Target("all", (1.0,), False), n_trials=0)
    assert not np.array_equal(plain.methods["scipy"].nested_pred, a.methods["scipy"].nested_pred)


@pytest.fixture(scope="module")
def origin_shift():
    """The real case in small: one model strong on corpus rows and weak on other-origin rows."""
    oofs = origin_shift_oofs(n=4000, n_other=1200, n_folds=4, seed=1)
    return oofs, run(oofs, None, target=Target(), n_trials=0), run(oofs, None, n_trials=0)


def test_an_all_rows_fit_loses_to_the_mean_on_other_rows_and_the_default_does_not(origin_shift):
    _, default, all_rows = origin_shift
    mean_other = default.methods["mean"].figures["qwk_nested_other"]
    # The failure of an all-rows fit: the scipy blend piles weight on the corpus-strong model ...
    assert all_rows.methods["scipy"].combiner.model_weights["corpus-strong"] > 0.15
    assert all_rows.methods["scipy"].figures["qwk_nested_other"] < mean_other - 0.01
    # ... the target-aware default weights other-origin rows up and picks a method that does not lose to the mean.
    assert default.metrics["select_on"] == "other" and default.metrics["by_origin"] is True
    assert default.metrics["qwk_nested_other"] >= mean_other - 1e-9
    assert default.metrics["qwk_nested_other"] > all_rows.metrics["qwk_nested_other"] + 0.01


def test_weighting_other_rows_up_moves_blend_weight_off_the_corpus_strong_model(origin_shift):
    oofs, _, all_rows = origin_shift
    rows = Rows(oofs.y, oofs.fold, oofs.other, np.ones(len(oofs.y)))
    P = pd.DataFrame(oofs.matrix(), columns=oofs.names)
    heavy = evaluate_method("scipy", P, rows, Target(16.0, (1.0,), False), ScipyBlender())
    all_rows_weights = all_rows.methods["scipy"].combiner.model_weights
    assert heavy.combiner.model_weights["corpus-strong"] < all_rows_weights["corpus-strong"] - 0.05
    assert heavy.figures["qwk_nested_other"] > all_rows.methods["scipy"].figures["qwk_nested_other"]


def test_the_frontier_has_every_method_at_every_weight(origin_shift):
    _, default, _ = origin_shift
    table = default.frontier
    assert set(table["method"]) == {"mean", "greedy", "scipy", "stacker"}
    for _, rows in table.groupby("method"):
        assert rows["target_weight"].tolist() == ["1", "2", "4", "8", "16", "chosen"]
        assert rows[["qwk_all", "qwk_other"]].notna().all().all()
    scipy = table[table["method"] == "scipy"].set_index("target_weight")
    assert scipy.loc["16", "qwk_all"] != scipy.loc["1", "qwk_all"]  # the weight changes the fit


def test_intervals_cover_every_method_and_model_and_contain_the_point(origin_shift):
    oofs, default, _ = origin_shift
    table = default.intervals.set_index("name")
    assert set(table.index) == {"mean", "greedy", "scipy", "stacker"} | {f"model:{m}" for m in oofs.names}
    for key in ("all", "other"):
        assert (table[f"qwk_{key}_low"] <= table[f"qwk_{key}"]).all()
        assert (table[f"qwk_{key}"] <= table[f"qwk_{key}_high"]).all()
        assert (table[f"qwk_{key}_high"] - table[f"qwk_{key}_low"] > 0.005).all()
    assert table.loc[default.selected, ["diff_vs_selected", "diff_low", "diff_high"]].tolist() == [0, 0, 0]
    assert default.metrics["intervals"]["rows"][0]["name"] == "mean"


def test_selection_keeps_the_simpler_method_unless_the_complex_one_wins_beyond_its_interval():
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.integers(1, 7, n)
    folds = np.arange(n) % 5
    near = np.where(rng.random(n) < 0.80, y, rng.integers(1, 7, n))
    better = np.where(rng.random(n) < 0.05, y, near)  # a few more rows right: a real but small win
    much = np.where(rng.random(n) < 0.5, y, near)
    methods = {"mean": None, "scipy": None}
    small = bootstrap_qwk(y, {"mean": near, "scipy": better}, folds, n_draws=300, level=0.9)
    large = bootstrap_qwk(y, {"mean": near, "scipy": much}, folds, n_draws=300, level=0.9)
    fixed, broken = np.flatnonzero(near != y)[:12], np.flatnonzero(near == y)[:50]
    close = near.copy()
    close[fixed], close[broken] = y[fixed], np.where(y[broken] < 6, y[broken] + 1, 5)  # wins a few, loses a few
    tiny = bootstrap_qwk(y, {"mean": near, "scipy": close}, folds, n_draws=300)
    assert tiny.point["scipy"] > tiny.point["mean"]
    assert select_method(methods, large, "simplest")[0] == "scipy"
    kept = select_method(methods, tiny, "simplest")
    assert kept[0] == "mean" and "simpler mean is kept" in kept[1]
    assert select_method(methods, small, "simplest")[0] in ("mean", "scipy")
    # The default takes the best nested QWK, and says what the simpler rule would have kept.
    best = select_method(methods, tiny)
    assert best[0] == "scipy" and "best nested QWK" in best[1] and "simplest would keep mean" in best[1]
    assert select_method(methods, large, "best")[0] == "scipy"
    tie = bootstrap_qwk(y, {"mean": near, "scipy": near}, folds, n_draws=50)
    assert select_method(methods, tie, "best")[0] == "mean"  # a tie goes to the simpler method
    assert small.difference("scipy", "mean")["low"] <= small.difference("scipy", "mean")["diff"]


def test_frontier_table_labels_weights():
    oofs = synthetic_oofs(seed=8)
    res = run(oofs, None, target=Target(4.0, (1.0,), False), n_trials=0)
    assert res.metrics["select_on"] == "weighted" and res.metrics["target"] == 4.0
    assert set(frontier_table(res.methods, Rows(oofs.y, oofs.fold, oofs.other, np.ones(len(oofs.y))))["target_weight"]) \
        == {"4", "chosen"}


def test_without_text_features_the_stacker_sees_predictions_only():
    oofs = synthetic_oofs(seed=5)
    res = run(oofs, None, n_trials=0)
    assert res.featurizer is None
    assert not [c for c in res.feature_columns if c.startswith("text__")]
    assert "pred__good" in res.feature_columns and "fair__prob_3" in res.feature_columns


def test_feature_names_are_safe_for_lightgbm():
    oofs = synthetic_oofs()
    oofs.preds = {"deberta:v3[large]": oofs.preds["good"]}
    oofs.probs = {}
    assert list(stacker_features(oofs.preds, oofs.probs, None).columns) == ["pred__deberta_v3_large_"]


def test_prompt_mix_weights_change_the_scores():
    oofs = synthetic_oofs(seed=6)
    plain = run(oofs, None, n_trials=0)
    weighted = run(oofs, None, n_trials=0, prompt_mix={"Venus": 0.8, "Mars": 0.1, "Cars": 0.1})
    assert weighted.metrics["weighted_by_prompt_mix"] is True
    assert plain.methods["greedy"].figures["qwk_nested"] != weighted.methods["greedy"].figures["qwk_nested"]


def prompt_scale_case(n: int = 600) -> tuple[OOFSet, list[str]]:
    """Models that rank essays well but ignore that each prompt scores on its own scale (offsets -1, 0, +1)."""
    rng = np.random.default_rng(11)
    cluster = rng.integers(0, 3, n)
    quality = rng.normal(3.5, 0.9, n)
    y = np.clip(np.rint(quality + np.array([-1.0, 0.0, 1.0])[cluster]), 1, 6).astype(int)
    folds = pd.DataFrame({"essay_id": [f"e{i}" for i in range(n)], "score": y, "fold": np.arange(n) % 4,
                          "prompt_cluster": cluster, "origin": "other"})
    folds["prompt_name"] = folds["prompt_cluster"].map({0: "Venus", 1: "Mars", 2: "Cars"})
    oofs = OOFSet(folds=folds, preds={"model": quality + rng.normal(0, 0.3, n)}, probs={})
    return oofs, [f"{TOPIC_WORDS[c]} essay number {i} ends here." for i, c in enumerate(cluster)]


def test_prompt_features_let_the_stacker_score_each_prompt_on_its_own_scale():
    """With the recovered prompt cluster as a feature, the nested stacker corrects each prompt's offset."""
    oofs, texts = prompt_scale_case()

    plain = run(oofs, texts, n_trials=0, text_features=False)
    aware = run(oofs, texts, n_trials=0, text_features=False, prompt_features=True)
    assert plain.prompt_assigner is None and not [c for c in plain.feature_columns if c.startswith("prompt__")]
    assert [c for c in aware.feature_columns if c.startswith("prompt__")] == ["prompt__0", "prompt__1", "prompt__2"]
    assert "z__pred__model" in aware.feature_columns and set(aware.prompt_stats) == {"pred__model"}
    assert aware.metrics["prompt_assigner_agreement"] == 1.0
    gain = aware.methods["stacker"].figures["qwk_nested"] - plain.methods["stacker"].figures["qwk_nested"]
    assert gain > 0.05, gain


def test_per_prompt_thresholds_put_each_prompt_on_its_scale_nested_and_at_inference(tmp_path):
    from common.ensemble.ensemble_artifact import ENSEMBLE_DIR, EnsembleArtifact
    from common.scoring.thresholds import apply_thresholds

    oofs, texts = prompt_scale_case(1200)  # 300 essays a prompt in each training split: over 200, its own cut points
    per_prompt = Target("all", (1.0,), False, by_prompt=True)
    plain = run(oofs, texts, n_trials=0, text_features=False)
    aware = run(oofs, texts, n_trials=0, text_features=False, target=per_prompt)
    gain = aware.methods["mean"].figures["qwk_nested"] - plain.methods["mean"].figures["qwk_nested"]
    assert gain > 0.05, gain  # one model, no stacker: the cut points alone put the prompts on their scales
    cuts = aware.methods["mean"].extra["thresholds_by_prompt"]
    assert set(cuts) == {"0", "1", "2"} and cuts["0"][2] > cuts["2"][2] + 1.0  # prompt 0 scores 2 points lower
    assert aware.metrics["by_prompt"] and not [c for c in aware.feature_columns if c.startswith("prompt__")]
    # Leak-free: fold 0's nested scores do not move when fold 0's labels are scrambled.
    scrambled = oofs.folds.copy()
    held = scrambled["fold"] == 0
    scrambled.loc[held, "score"] = np.random.default_rng(0).permutation(scrambled.loc[held, "score"].to_numpy())
    again = run(OOFSet(folds=scrambled, preds=oofs.preds, probs={}), texts, n_trials=0, text_features=False,
                target=per_prompt)
    np.testing.assert_array_equal(aware.methods["mean"].nested_scores[held.to_numpy()],
                                  again.methods["mean"].nested_scores[held.to_numpy()])
    # 05_infer: each test essay gets its cluster's cut points, through the saved artifact.
    EnsembleArtifact.from_result(aware, oofs.names, [0, 1, 2, 3]).save(tmp_path / ENSEMBLE_DIR)
    spec = EnsembleArtifact.read_spec(tmp_path)
    loaded = EnsembleArtifact.load(tmp_path / ENSEMBLE_DIR, spec)
    continuous, scores = loaded.predict(oofs.preds, {}, texts)
    clusters = oofs.folds["prompt_cluster"].astype(str).to_numpy()
    expected = np.zeros(len(scores), dtype=int)
    for c, c_cuts in spec["thresholds_by_prompt"].items():
        expected[clusters == c] = apply_thresholds(continuous[clusters == c], np.asarray(c_cuts))
    np.testing.assert_array_equal(scores, expected)
    assert not np.array_equal(scores, apply_thresholds(continuous, np.asarray(spec["thresholds"])))


def test_prompt_features_need_texts():
    with pytest.raises(ValueError, match="prompt_features and per-prompt thresholds need the train texts"):
        run(synthetic_oofs(), None, prompt_features=True)


def test_prompt_statistics_standardise_each_prompt_on_its_own():
    X = pd.DataFrame({"pred__m": [1.0, 3.0, 10.0, 14.0, 5.0], "text__words": [100.0, 300.0, 50.0, 50.0, 80.0],
                      "m__prob_1": [0.1, 0.2, 0.3, 0.4, 0.5]})
    prompts = np.array([0, 0, 1, 1, 1])
    stats = fit_prompt_stats(X, prompts, classes=[0, 1, 2])
    assert set(stats) == {"pred__m", "text__words"}  # class probabilities are not standardised
    assert stats["pred__m"]["0"] == [2.0, pytest.approx(np.sqrt(2.0))]
    assert stats["text__words"]["1"][1] == pytest.approx(np.std([50.0, 50.0, 80.0], ddof=1))
    assert stats["pred__m"]["2"] == [pytest.approx(6.6), pytest.approx(np.std(X["pred__m"], ddof=1))]  # no rows
    frame = stacker_features({"m": np.array([2.0, 8.0])}, {}, pd.DataFrame({"words": [200.0, 60.0]}),
                             np.array([0, 2]), stats)
    assert list(frame.columns) == ["pred__m", "text__words", "prompt__0", "prompt__1", "prompt__2",
                                   "z__pred__m", "z__text__words"]
    np.testing.assert_allclose(frame["z__pred__m"], [0.0, (8.0 - 6.6) / np.std(X["pred__m"], ddof=1)])
    np.testing.assert_allclose(frame[["prompt__0", "prompt__1", "prompt__2"]], [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"prompt clusters \['7'\] have no statistics"):
        stacker_features({"m": np.array([2.0])}, {}, None, np.array([7]), {"pred__m": stats["pred__m"]})
    with pytest.raises(ValueError, match="lack"):
        stacker_features({"m": np.array([2.0])}, {}, None, np.array([0]), stats)


def _case_of_the_issue(seed: int = 0):
    """The real case: on 4,400 other-origin rows of 17,000, `greedy` is a hair ahead (noise), while on all rows the
    `stacker` is far ahead."""
    rng = np.random.default_rng(seed)
    n, n_other = 17000, 4400
    y = rng.integers(1, 7, n)
    folds = np.arange(n) % 5
    other = np.zeros(n, dtype=bool)
    other[:n_other] = True
    base = np.where(rng.random(n) < 0.72, y, np.clip(y + rng.choice([-1, 1], n), 1, 6))
    stacker = base.copy()
    fix = np.flatnonzero(~other & (stacker != y))[:600]  # the stacker gets 600 more corpus rows right
    stacker[fix] = y[fix]
    greedy = base.copy()
    fixed = np.flatnonzero(other & (greedy != y))[:60]  # greedy: 60 other-origin rows right that the stacker
    broken = np.flatnonzero(other & (greedy == y))[:50]  # misses and 50 wrong that it gets: a hair ahead
    greedy[fixed], greedy[broken] = y[fixed], np.where(y[broken] < 6, y[broken] + 1, 5)
    scores = {"greedy": greedy, "stacker": stacker}
    on_other = bootstrap_qwk(y, scores, folds, other, n_draws=300, seed=1)
    on_all = bootstrap_qwk(y, scores, folds, n_draws=300, seed=1)
    return y, folds, other, scores, on_other, on_all


def test_noise_aware_selection_does_not_give_away_a_clear_win_on_all_rows_for_noise():
    *_, on_other, on_all = _case_of_the_issue()
    assert on_other.point["greedy"] > on_other.point["stacker"]  # greedy is ahead on the target's rows ...
    assert on_other.difference("greedy", "stacker")["low"] <= 0  # ... within the paired interval
    assert on_all.difference("stacker", "greedy")["low"] > 0  # the stacker's win on all rows is clear
    methods = {"greedy": None, "stacker": None}
    assert select_method(methods, on_other, "best")[0] == "greedy"
    kept, why = select_method(methods, on_other, "noise_aware", on_all.point)
    assert kept == "stacker" and "inside the paired interval" in why and "stacker is kept" in why


def test_noise_aware_selection_keeps_a_clear_lead_on_the_target_rows():
    y, folds, other, scores, _, _ = _case_of_the_issue()
    greedy = scores["greedy"].copy()
    wrong = np.flatnonzero(other & (greedy != y))[:400]  # now 400 more other-origin rows right: a clear lead
    greedy[wrong] = y[wrong]
    clear = {"greedy": greedy, "stacker": scores["stacker"]}
    on_other = bootstrap_qwk(y, clear, folds, other, n_draws=300, seed=1)
    assert on_other.difference("greedy", "stacker")["low"] > 0
    all_rows = bootstrap_qwk(y, clear, folds, n_draws=300, seed=1).point
    kept, why = select_method({"greedy": None, "stacker": None}, on_other, "noise_aware", all_rows)
    assert kept == "greedy" and "none of the others within its paired interval" in why


def test_the_target_weight_is_chosen_by_the_same_rule():
    from common.ensemble.selection import pick_weight

    y, folds, other, scores, _, _ = _case_of_the_issue()
    rows = Rows(y=y, folds=folds, other=other, base=np.ones(y.size))
    by_weight = {1.0: scores["stacker"], 16.0: scores["greedy"]}  # weight 16: a hair ahead on other rows only
    every = np.ones(y.size, dtype=bool)
    best = Target("auto", (1.0, 16.0), True, rule="best", n_draws=300, seed=1)
    assert pick_weight(by_weight, rows, best, every)[0] == 16.0
    noise_aware = Target("auto", (1.0, 16.0), True, rule="noise_aware", n_draws=300, seed=1)
    weight, why = pick_weight(by_weight, rows, noise_aware, every)
    assert weight == 1.0 and "target weight 16 leads 1" in why


def test_two_folds_fall_back_to_a_fixed_target_weight_and_say_so(caplog):
    oofs = synthetic_oofs(seed=2)
    oofs.folds["fold"] = oofs.folds["fold"] % 2
    with caplog.at_level("WARNING"):
        res = run(oofs, None, target=Target("auto", (1.0, 4.0), True), n_trials=0)
    assert "needs at least 3 folds, there are 2" in caplog.text
    assert "stacker" not in res.methods  # its nested evaluation needs more folds: skipped, as before
    assert all(m.extra["target_weight"] == "1" for m in res.methods.values())
    assert res.metrics["selection_rule"] == "noise_aware"
