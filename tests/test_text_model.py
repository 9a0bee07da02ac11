"""Tests for common/models/text_model.py: features fitted on the training rows alone, saved without pickle, identical
predictions after loading, both learners, and a tfidf member through 02_train and 05's prediction code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from common.config.loader import load_params
from common.config.model_params import ModelParams, TextModelParams
from common.models.text_model import (
    ARRAYS_FILE,
    BOOSTER_FILE,
    MODEL_FILE,
    CorpusCounts,
    TextData,
    TextModel,
    fit_text_model,
    is_text_model,
    train_text_fold,
    vectorizer_settings,
)
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores
from tests.conftest import run_cli

FILLER = ("the essay says that people should think about the idea because it matters to students and schools "  # noqa: SIM905
          "in many ways").split()


def scored_essays(n: int = 240, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Essays whose score shows in their words: a score-s essay uses 'strongN' words s times and is longer."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(1, 7, size=n)
    texts = []
    for s in scores:
        words = list(rng.choice(FILLER, size=20 + 10 * int(s)))
        words += [f"strong{int(s)}"] * 3 + ["evidence"] * int(s) + ["bad"] * (6 - int(s))
        rng.shuffle(words)
        texts.append(" ".join(words) + ".")
    return texts, scores


def make_data(texts: list[str], scores: np.ndarray, params: TextModelParams, n_folds: int = 4) -> TextData:
    folds = np.arange(len(texts)) % n_folds
    return TextData(essay_ids=np.array([f"e{i}" for i in range(len(texts))]), texts=texts, scores=scores,
                    folds=folds, counts=CorpusCounts(texts, vectorizer_settings(params)))


def test_word_block_equals_a_vectorizer_fitted_on_the_training_rows_alone() -> None:
    texts, scores = scored_essays()
    texts[1] = texts[1] + " heldoutonlyword heldoutonlyword"  # row 1 is in fold 1, held out below
    train = np.flatnonzero(np.arange(len(texts)) % 4 != 1)
    vectorizer = dict(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, min_df=2)
    # A cut where the 60 or so most frequent terms are not tied with the next: scikit-learn breaks such ties in
    # no documented order (it changed with numpy's sort), the model to the earlier term.
    counts = CountVectorizer(**{k: v for k, v in vectorizer.items() if k != "sublinear_tf"})
    totals = np.sort(np.asarray(counts.fit_transform([texts[i] for i in train]).sum(axis=0)).ravel())[::-1]
    limit = max(k for k in range(2, 61) if totals[k - 1] > totals[k])
    assert limit >= 40 and totals.size > limit
    params = TextModelParams(word_ngrams=2, char_ngrams=[], counts=False, min_df=2, max_features=limit)
    data = make_data(texts, scores, params)
    model, _ = fit_text_model(params, data, train, seed=0)
    reference = TfidfVectorizer(**vectorizer, max_features=limit).fit([texts[i] for i in train])
    assert model.vocabularies["word"] == reference.get_feature_names_out().tolist()
    assert "heldoutonlyword" not in model.vocabularies["word"]
    np.testing.assert_allclose(model.idf["word"], reference.idf_)
    held = [texts[i] for i in np.flatnonzero(data.folds == 1)]
    np.testing.assert_allclose(model.features(held).toarray(), reference.transform(held).toarray(), atol=1e-12)


def test_the_counts_are_scaled_on_the_training_rows_only() -> None:
    texts, scores = scored_essays()
    params = TextModelParams(word_ngrams=1, char_ngrams=[], counts=True)
    data = make_data(texts, scores, params)
    long_essays = list(texts)
    for i in np.flatnonzero(data.folds == 0):
        long_essays[i] = texts[i] * 5  # held-out rows five times longer: the scaling must not move
    data_long = TextData(data.essay_ids, long_essays, scores, data.folds, CorpusCounts(long_essays,
                                                                                       vectorizer_settings(params)))
    train = np.flatnonzero(data.folds != 0)
    a, _ = fit_text_model(params, data, train, seed=0)
    b, _ = fit_text_model(params, data_long, train, seed=0)
    np.testing.assert_array_equal(a.count_mean, b.count_mean)
    np.testing.assert_array_equal(a.coef, b.coef)


@pytest.mark.parametrize("learner", ["ridge", "lightgbm"])
def test_saved_without_pickle_and_loaded_it_predicts_the_same(learner: str, tmp_path) -> None:
    texts, scores = scored_essays()
    params = TextModelParams(learner=learner, char_ngrams=[2, 3], rounds=60, max_features=500)
    data = make_data(texts, scores, params)
    train, held = np.flatnonzero(data.folds != 0), np.flatnonzero(data.folds == 0)
    model, steps = fit_text_model(params, data, train, seed=3, held_out=held)
    model.save(tmp_path)
    expected = {MODEL_FILE, ARRAYS_FILE} | ({BOOSTER_FILE} if learner == "lightgbm" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as arrays:  # plain float arrays only
        assert all(arrays[key].dtype == np.float64 for key in arrays.files)
    json.loads((tmp_path / MODEL_FILE).read_text())
    held_texts = [texts[i] for i in held]
    loaded = TextModel.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict(held_texts), model.predict(held_texts))
    assert TextModel.problem(tmp_path) is None and is_text_model(tmp_path)
    # The words carry the score: the held-out fold is scored far better than chance.
    assert qwk(scores[held], round_scores(loaded.predict(held_texts))) > 0.8
    if learner == "lightgbm":
        assert "eval_loss" in steps and steps["step"].max() == 60


def test_fits_are_seeded_and_repeatable() -> None:
    texts, scores = scored_essays()
    params = TextModelParams(learner="lightgbm", rounds=40, max_features=300)
    data = make_data(texts, scores, params)
    train = np.flatnonzero(data.folds != 2)
    first = fit_text_model(params, data, train, seed=5)[0].predict(texts[:20])
    again = fit_text_model(params, data, train, seed=5)[0].predict(texts[:20])
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("damage", ["truncate_npz", "truncate_booster", "cut_booster_last_line", "drop_json",
                                    "short_idf"])
def test_a_damaged_saved_model_is_named(damage: str, tmp_path) -> None:
    texts, scores = scored_essays(120)
    params = TextModelParams(learner="lightgbm", rounds=20, max_features=200)
    data = make_data(texts, scores, params)
    fit_text_model(params, data, np.flatnonzero(data.folds != 0), seed=0)[0].save(tmp_path)
    if damage == "truncate_npz":
        blob = (tmp_path / ARRAYS_FILE).read_bytes()
        (tmp_path / ARRAYS_FILE).write_bytes(blob[: len(blob) // 2])
    elif damage == "truncate_booster":
        text = (tmp_path / BOOSTER_FILE).read_text()
        (tmp_path / BOOSTER_FILE).write_text(text[: len(text) // 3])
    elif damage == "cut_booster_last_line":  # LightGBM itself loads this one without a word
        text = (tmp_path / BOOSTER_FILE).read_text()
        (tmp_path / BOOSTER_FILE).write_text(text.rstrip("\n").rsplit("\n", 1)[0] + "\n")
    elif damage == "drop_json":
        (tmp_path / MODEL_FILE).unlink()
    else:
        spec = json.loads((tmp_path / MODEL_FILE).read_text())
        spec["vocabularies"]["word"] = spec["vocabularies"]["word"][:-1]
        (tmp_path / MODEL_FILE).write_text(json.dumps(spec))
    problem = TextModel.problem(tmp_path)
    assert problem is not None
    if damage == "drop_json":
        assert MODEL_FILE in problem
    if damage in ("truncate_booster", "cut_booster_last_line"):
        assert BOOSTER_FILE in problem


def test_full_fit_trains_on_every_row(tmp_path) -> None:
    texts, scores = scored_essays(120)
    spec = ModelParams(kind="tfidf", tfidf=TextModelParams(max_features=300))
    data = make_data(texts, scores, spec.tfidf)
    oof, metrics, steps = train_text_fold(spec, data, None, tmp_path, seed=0)
    assert oof.empty and metrics["n_train_rows"] == 120 and metrics["qwk_rounded"] is None
    assert not steps.empty


@pytest.mark.parametrize("override, key", [
    ("train.models.t.tfidf.char_ngrams=[5, 3]", "char_ngrams"),
    ("train.models.t.tfidf.learner=svm", "learner"),
    ("train.models.t.tfidf.min_df=0", "min_df"),
    ("train.models.t.mlm.epochs=1", "mlm.epochs"),
])
def test_bad_text_model_settings_are_named(override: str, key: str) -> None:
    from common.config.fields import ParamsError

    with pytest.raises(ParamsError, match=key.split(".")[0]):
        load_params(None, ["train.models.t.kind=tfidf", override])


def test_a_text_model_cannot_teach() -> None:
    from common.config.fields import ParamsError

    with pytest.raises(ParamsError, match="teacher"):
        load_params(None, ["train.models.t.kind=tfidf", "train.students.s.teacher=t",
                           "train.students.s.stages=[{rows: pseudo, epochs: 1}, {rows: all, epochs: 1}]"])


TFIDF = ["train.models={words: {kind: tfidf, tfidf: {max_features: 2000, char_ngrams: [3, 4]}, full_fit: beside}}",
         "train.students={}", "train.device=cpu"]


def test_a_tfidf_member_trains_in_02_and_05_predicts_what_02_predicted(prepared_output, demo_input, tmp_path):
    import shutil

    import torch

    from common.core.artifact_checks import Problems
    from common.infer.artifacts import ArtifactSet
    from common.infer.inference import predict_models

    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(prepared_output / "prepare", out / "prepare")
    common = [f"paths.input={folder}", f"paths.output={out}", *TFIDF]
    first = run_cli("02_train", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    model_dir = out / "train" / "words"
    oof = pd.read_parquet(model_dir / "oof.parquet")
    folds = pd.read_parquet(out / "prepare" / "folds.parquet")
    assert sorted(oof["essay_id"]) == sorted(folds["essay_id"])
    assert (model_dir / "folds" / "full" / MODEL_FILE).is_file()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["qwk_rounded"] is not None
    # 05's prediction code on fold 0's held-out essays gives exactly 02's OOF predictions.
    train = pd.read_csv(folder / "train.csv").set_index("essay_id")
    held = oof[oof["fold"] == 0]
    fold_dir = model_dir / "folds" / "fold_0"
    artifacts = ArtifactSet(root=out, spec={"models": ["words"]}, folds=[0], fold_dirs={"words": [fold_dir]})
    problems = Problems()
    ArtifactSet._check_fold(fold_dir, problems, "fix")  # the artifact check accepts the saved fold
    assert not problems

    predicted = predict_models(artifacts, train.loc[held["essay_id"], "full_text"].tolist(), [torch.device("cpu")],
                               "fp32", 4096)
    np.testing.assert_array_equal(predicted.preds["words"], held["pred"].to_numpy())
    # A second run keeps every fold (same fingerprint) and says so.
    stamp = (fold_dir / ARRAYS_FILE).stat().st_mtime_ns
    again = run_cli("02_train", *common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained" in again.stderr and (fold_dir / ARRAYS_FILE).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("n_folds", [2, 3])
def test_03_04_05_run_on_two_and_three_folds(n_folds: int, demo_input, tmp_path):
    """The default target (auto) chooses its weight inside each training split: with 2 folds there is none, so 04
    falls back to a fixed weight and says so instead of crashing; 05 then writes the submission."""
    folder, _ = demo_input
    common = [f"paths.input={folder}", f"paths.output={tmp_path}", f"prepare.n_folds={n_folds}",
              "train.models={words: {kind: tfidf, tfidf: {max_features: 2000, char_ngrams: []}}}", "train.students={}",
              "ensemble.n_trials=1", "ensemble.bootstrap_draws=50"]
    for stage in ("00_prepare", "02_train", "03_oof_thresholds", "04_ensemble", "05_infer"):
        result = run_cli(stage, *common)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
        if stage == "04_ensemble" and n_folds == 2:
            assert "needs at least 3 folds, there are 2" in result.stderr
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert len(submission) == len(pd.read_csv(folder / "test.csv")) and submission["score"].between(1, 6).all()
    metrics = json.loads((tmp_path / "ensemble" / "metrics.json").read_text())
    assert metrics["selection_rule"] == "noise_aware" and metrics["target_weight_reason"]


def test_lightgbm_sees_the_columns_most_correlated_with_the_training_scores() -> None:
    import scipy.sparse as sp

    from common.models.text_model import most_correlated

    rng = np.random.default_rng(0)
    dense = rng.random((200, 30)) * (rng.random((200, 30)) < 0.3)
    dense[:, 7] = 0.0  # a constant column never wins
    y = dense[:, 3] * 2 - dense[:, 11] + rng.normal(0, 0.05, 200)
    corr = np.nan_to_num([abs(np.corrcoef(dense[:, j], y)[0, 1]) if dense[:, j].std() else 0 for j in range(30)])
    picked = most_correlated(sp.csr_matrix(dense), y, 5)
    assert set(picked) == set(np.argsort(-corr)[:5]) and {3, 11} <= set(picked) and 7 not in picked
    texts, scores = scored_essays()
    params = TextModelParams(learner="lightgbm", rounds=30, top_features=50)
    data = make_data(texts, scores, params)
    model, _ = fit_text_model(params, data, np.flatnonzero(data.folds != 0), seed=0)
    assert model.columns.size == 50 and model.inputs(texts[:3]).shape == (3, 50)
