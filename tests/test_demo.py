"""Tests of common/tools/demo.py (with demo_prompts.py and demo_essays.py): schemas, realism (origins, prompts, duplicates, score signal) and determinism."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import adjusted_rand_score

from common.tools.demo import (
    DEMO_FILES,
    PERSUADE_COLUMNS,
    TRAIN_SCORE_SHARES,
    main,
    make_demo_frames,
    write_demo_data,
)
from common.tools.demo_prompts import OTHER_PROMPTS, PROMPTS, TRAIN_PROMPTS

REAL_PROMPT_NAMES = [
    "Car-free cities",
    "Does the electoral college work?",
    "Exploring Venus",
    "The Face on Mars",
    "Facial action coding system",
    "A Cowboy Who Rode the Waves",
    "Driverless cars",
    "Phones and driving",
    "Summer projects",
    "Community service",
    "Mandatory extracurricular activities",
    "Cell phones at school",
    "Grades for extracurricular activities",
    "Distance learning",
    "Seeking multiple opinions",
]


def _normalise(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return make_demo_frames()


@pytest.fixture(scope="module")
def train_truth(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """truth rows of train essays, in the row order of train."""
    truth = frames["truth"]
    return (
        truth[truth["split"] == "train"].set_index("essay_id").loc[frames["train"]["essay_id"]].reset_index()
    )


def test_schemas_and_sizes(frames: dict[str, pd.DataFrame]) -> None:
    train, test, sub, corpus = (
        frames["train"],
        frames["test"],
        frames["sample_submission"],
        frames["persuade"],
    )
    assert list(train.columns) == ["essay_id", "full_text", "score"]
    assert list(test.columns) == ["essay_id", "full_text"]
    assert list(sub.columns) == ["essay_id", "score"]
    assert list(corpus.columns) == list(PERSUADE_COLUMNS)
    assert len(train) == 360 and len(test) == 48
    assert sub["essay_id"].tolist() == test["essay_id"].tolist()
    assert (sub["score"] == 3).all()
    n_matched = corpus["full_text"].map(_normalise).isin(set(train["full_text"].map(_normalise))).sum()
    assert len(corpus) - n_matched == 420
    assert 260 <= n_matched <= 272


def test_ids(frames: dict[str, pd.DataFrame]) -> None:
    train_ids, test_ids = frames["train"]["essay_id"], frames["test"]["essay_id"]
    corpus_ids = frames["persuade"]["essay_id_comp"]
    assert train_ids.str.fullmatch(r"[0-9a-f]{7}").all() and test_ids.str.fullmatch(r"[0-9a-f]{7}").all()
    assert corpus_ids.str.fullmatch(r"[0-9A-F]{12}").all()
    assert train_ids.is_unique and test_ids.is_unique and corpus_ids.is_unique
    assert not set(train_ids) & set(test_ids)


def test_score_distribution(frames: dict[str, pd.DataFrame]) -> None:
    scores = frames["train"]["score"]
    assert scores.dtype.kind == "i"
    shares = scores.value_counts(normalize=True).reindex(range(1, 7), fill_value=0.0).to_numpy()
    assert (shares > 0).all()
    np.testing.assert_allclose(shares, TRAIN_SCORE_SHARES, atol=0.02)
    assert set(frames["persuade"]["holistic_essay_score"]) == set(range(1, 7))


def test_essay_shape(frames: dict[str, pd.DataFrame]) -> None:
    texts = pd.concat([frames["train"]["full_text"], frames["test"]["full_text"]])
    word_counts = texts.str.split().str.len()
    assert word_counts.between(60, 450).all()
    assert texts.str.contains("\n\n").mean() > 0.5
    corpus = frames["persuade"]
    assert (corpus["word_count"] == corpus["full_text"].str.split().str.len()).all()


def test_score_is_learnable_from_length(frames: dict[str, pd.DataFrame]) -> None:
    train = frames["train"]
    correlation = spearmanr(train["full_text"].str.split().str.len(), train["score"])[0]
    assert 0.4 < correlation < 0.85


def test_three_quarters_of_train_in_corpus_with_same_score(
    frames: dict[str, pd.DataFrame], train_truth: pd.DataFrame
) -> None:
    train, corpus = frames["train"], frames["persuade"]
    corpus_score = dict(zip(corpus["full_text"].map(_normalise), corpus["holistic_essay_score"], strict=True))
    normalised = train["full_text"].map(_normalise)
    in_corpus = normalised.isin(corpus_score)
    assert 0.7 <= in_corpus.mean() <= 0.8
    assert (normalised[in_corpus].map(corpus_score) == train["score"][in_corpus]).all()
    assert not train["full_text"].isin(set(corpus["full_text"])).any(), "whitespace should differ"
    assert (in_corpus == (train_truth["origin"] == "persuade")).all()
    assert corpus["full_text"].str.contains("\xa0").any()
    assert not frames["test"]["full_text"].map(_normalise).isin(corpus_score).any()


def test_prompts(frames: dict[str, pd.DataFrame], train_truth: pd.DataFrame) -> None:
    assert [p.name for p in PROMPTS] == REAL_PROMPT_NAMES
    assert list(TRAIN_PROMPTS) == REAL_PROMPT_NAMES[:7]
    corpus = frames["persuade"]
    assert sorted(corpus["prompt_name"].unique()) == sorted(REAL_PROMPT_NAMES)
    assert set(corpus["task"]) == {"Independent", "Text dependent"}
    assert set(train_truth["prompt_name"]) == set(TRAIN_PROMPTS)
    other = train_truth[train_truth["origin"] == "other"]
    assert set(other["prompt_name"]) == set(OTHER_PROMPTS)
    truth = frames["truth"]
    assert set(truth.loc[truth["split"] == "test", "prompt_name"]) <= set(OTHER_PROMPTS)


def test_other_origin_scores_lower(frames: dict[str, pd.DataFrame], train_truth: pd.DataFrame) -> None:
    scores = frames["train"]["score"]
    other = train_truth["origin"] == "other"
    assert scores[other].mean() < scores[~other].mean() - 0.2


def test_prompts_separable_by_tfidf_clustering(
    frames: dict[str, pd.DataFrame], train_truth: pd.DataFrame
) -> None:
    features = TfidfVectorizer(stop_words="english", min_df=2, sublinear_tf=True).fit_transform(
        frames["train"]["full_text"]
    )
    clusters = KMeans(n_clusters=7, n_init=10, random_state=0).fit_predict(features)
    assert adjusted_rand_score(train_truth["prompt_name"], clusters) > 0.95


def test_duplicates(frames: dict[str, pd.DataFrame], train_truth: pd.DataFrame) -> None:
    train = frames["train"]
    exact = train[train["full_text"].duplicated(keep=False)]
    assert 3 <= train["full_text"].duplicated().sum() <= 6
    assert (exact.groupby("full_text")["score"].nunique() == 1).all()
    text_of = dict(zip(train["essay_id"], train["full_text"], strict=True))
    near = train_truth[train_truth["duplicate_kind"] == "near"]
    assert 3 <= len(near) <= 6
    for essay_id, source_id in zip(near["essay_id"], near["duplicate_of"], strict=True):
        a, b = text_of[essay_id].split(), text_of[source_id].split()
        assert a != b and len(a) == len(b)
        assert difflib.SequenceMatcher(a=a, b=b).ratio() > 0.95
    corpus_texts = frames["persuade"]["full_text"].map(_normalise)
    assert corpus_texts.is_unique


def test_same_seed_same_frames_other_seed_different() -> None:
    a, b = (
        make_demo_frames(seed=3, n_train=80, n_test=8, n_corpus_only=40),
        make_demo_frames(seed=3, n_train=80, n_test=8, n_corpus_only=40),
    )
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key])
    c = make_demo_frames(seed=4, n_train=80, n_test=8, n_corpus_only=40)
    assert not a["train"]["full_text"].equals(c["train"]["full_text"])


def test_written_files_are_byte_identical_and_round_trip(
    tmp_path: Path, frames: dict[str, pd.DataFrame]
) -> None:
    first = write_demo_data(tmp_path / "a")
    second = write_demo_data(tmp_path / "b")
    assert {key: path.name for key, path in first.items()} == DEMO_FILES
    for key in DEMO_FILES:
        assert first[key].read_bytes() == second[key].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(DEMO_FILES.values())
    train = pd.read_csv(first["train"], keep_default_na=False)
    assert train["full_text"].tolist() == frames["train"]["full_text"].tolist()
    assert train["score"].tolist() == frames["train"]["score"].tolist()
    corpus = pd.read_csv(first["persuade"], keep_default_na=False)
    assert corpus["full_text"].tolist() == frames["persuade"]["full_text"].tolist()


def test_command_line(tmp_path: Path) -> None:
    main(
        ["--out", str(tmp_path), "--seed", "11", "--n-train", "60", "--n-test", "5", "--n-corpus-only", "30"]
    )
    assert len(pd.read_csv(tmp_path / "train.csv")) == 60
    assert len(pd.read_csv(tmp_path / "sample_submission.csv")) == 5


def test_too_small_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_train"):
        make_demo_frames(n_train=10)
