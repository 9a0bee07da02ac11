"""Tests of common/prepare/clusters.py: prompt recovery on essays generated from distinct topic vocabularies."""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from common.prepare.clusters import ClusterResult, PromptAssigner, name_clusters, recover_prompts

ASAP_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "asap_sets_1-6.csv.gz"
TOPIC_SIZES = (150, 100, 70, 40)


def _pseudo_words(rng: np.random.Generator, n_words: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n_words:
        words.add("".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(5, 10)))))
    return sorted(words)


def _topic_essays(
    sizes: tuple[int, ...] = TOPIC_SIZES, seed: int = 0, placeholders: bool = False
) -> tuple[list[str], np.ndarray]:
    """Essays of 60-120 words: a third from their topic's 30 words, the rest from 300 shared words.

    With placeholders, half of every topic's essays also carry anonymisation tokens (@CAPS1,
    Generic_Name) that all topics share.
    """
    rng = np.random.default_rng(seed)
    vocabulary = _pseudo_words(rng, 300 + 30 * len(sizes))
    shared, topic_words = vocabulary[:300], vocabulary[300:]
    texts: list[str] = []
    topics: list[int] = []
    for topic, size in enumerate(sizes):
        own = topic_words[30 * topic : 30 * (topic + 1)]
        for _ in range(size):
            length = int(rng.integers(60, 121))
            from_topic = rng.random(length) < 1 / 3
            words = [str(rng.choice(own)) if pick else str(rng.choice(shared)) for pick in from_topic]
            if placeholders and rng.random() < 0.5:
                words += [
                    "@CAPS1",
                    "@CAPS2",
                    "@PERSON1",
                    "@LOCATION1",
                    "Generic_Name",
                    "Generic_School",
                    "@NUM1",
                ] * 8
            texts.append(" ".join(words))
            topics.append(topic)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(topics)[order]


@pytest.fixture(scope="module")
def topics() -> tuple[list[str], np.ndarray, ClusterResult]:
    texts, truth = _topic_essays()
    return texts, truth, recover_prompts(texts, seed=3)


def test_recover_prompts_chooses_the_number_of_topics(topics) -> None:
    _, _, result = topics
    assert result.n_clusters == len(TOPIC_SIZES)
    assert sorted(result.selection_scores) == list(range(2, 21))
    assert max(result.selection_scores, key=result.selection_scores.get) == len(TOPIC_SIZES)


def test_recover_prompts_separates_distinct_topics_exactly(topics) -> None:
    _, truth, result = topics
    assert adjusted_rand_score(truth, result.labels) == 1.0


def test_cluster_zero_is_the_largest(topics) -> None:
    _, _, result = topics
    assert result.labels.shape == (sum(TOPIC_SIZES),)
    assert np.issubdtype(result.labels.dtype, np.integer)
    assert np.bincount(result.labels).tolist() == sorted(TOPIC_SIZES, reverse=True)


def test_same_seed_gives_same_labels(topics) -> None:
    texts, _, result = topics
    again = recover_prompts(texts, seed=3)
    np.testing.assert_array_equal(again.labels, result.labels)
    assert again.selection_scores == result.selection_scores


def test_given_number_of_clusters_skips_the_search() -> None:
    texts, truth = _topic_essays(seed=1)
    result = recover_prompts(texts, n_clusters=4, seed=0)
    assert result.n_clusters == 4
    assert result.selection_scores == {}
    assert adjusted_rand_score(truth, result.labels) == 1.0


def test_search_range_follows_max_clusters() -> None:
    texts, truth = _topic_essays(seed=2)
    result = recover_prompts(texts, max_clusters=6, seed=0)
    assert sorted(result.selection_scores) == [2, 3, 4, 5, 6]
    assert result.n_clusters == 4
    assert adjusted_rand_score(truth, result.labels) == 1.0


def test_shared_placeholder_tokens_do_not_form_clusters() -> None:
    texts, truth = _topic_essays(seed=4, placeholders=True)
    result = recover_prompts(texts, seed=0)
    assert result.n_clusters == len(TOPIC_SIZES)
    assert adjusted_rand_score(truth, result.labels) == 1.0


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        ([], {}, "no essays"),
        (["alpha beta", "   ", "gamma delta"], {}, "empty essay text"),
        (["alpha beta", "gamma delta"], {}, "pass at least 3 essays"),
        (["alpha beta", "gamma delta", "alpha gamma"], {"n_clusters": 4}, "pass at least 4 essays"),
        (["alpha beta", "gamma delta", "alpha gamma"], {"n_clusters": -1}, "n_clusters=-1"),
        (["alpha beta", "gamma delta", "alpha gamma"], {"max_clusters": 1}, "max_clusters=1"),
        (["the and of", "it is the", "@CAPS1 of 12"], {}, "no topic words"),
    ],
)
def test_recover_prompts_rejects_bad_input(texts: list[str], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recover_prompts(texts, **kwargs)


def test_name_clusters_names_by_majority_and_scores() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    known = ["venus", "venus", "mars", None, "mars", "mars", None, None, None]
    names, quality = name_clusters(labels, known)
    assert names == {0: "venus", 1: "mars", 2: "cluster_2"}
    assert quality["n_known"] == 5
    assert quality["purity"] == pytest.approx(4 / 5)
    expected_ari = adjusted_rand_score(["venus", "venus", "mars", "mars", "mars"], [0, 0, 0, 1, 1])
    assert quality["ari"] == pytest.approx(expected_ari)


def test_name_clusters_suffixes_smaller_clusters_that_share_a_majority() -> None:
    labels = np.array([5, 5, 5, 5, 2, 2, 2, 7, 7, 9])
    known = ["cars", "cars", "cars", "cars", "cars", "cars", "venus", "cars", None, "venus"]
    names, quality = name_clusters(labels, known)
    assert names == {2: "cars#2", 5: "cars", 7: "cars#3", 9: "venus"}
    assert len(set(names.values())) == len(names)
    assert quality["purity"] == pytest.approx(8 / 9)


def test_name_clusters_breaks_majority_ties_alphabetically() -> None:
    names, _ = name_clusters(np.array([0, 0]), ["mars", "cars"])
    assert names == {0: "cars"}


def test_name_clusters_without_known_prompts_scores_nan() -> None:
    names, quality = name_clusters(np.array([1, 0, 1]), [None, None, None])
    assert names == {0: "cluster_0", 1: "cluster_1"}
    assert quality["n_known"] == 0
    assert math.isnan(quality["purity"])
    assert math.isnan(quality["ari"])


def test_name_clusters_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 labels but 2 known prompts"):
        name_clusters(np.array([0, 1, 1]), ["a", "b"])


def test_name_clusters_rejects_missing_values_other_than_none() -> None:
    with pytest.raises(ValueError, match=r"known_prompts\[1\] is nan"):
        name_clusters(np.array([0, 1, 1]), ["a", float("nan"), None])


def test_recover_prompts_on_asap_slice() -> None:
    if not ASAP_FILE.exists():
        pytest.skip(f"{ASAP_FILE} is absent")
    essays = pd.read_csv(ASAP_FILE, usecols=["prompt_id", "full_text"])
    sample = essays.groupby("prompt_id").sample(200, random_state=0)
    result = recover_prompts(sample["full_text"].tolist(), seed=0)
    assert result.n_clusters == sample["prompt_id"].nunique()
    assert adjusted_rand_score(sample["prompt_id"], result.labels) >= 0.95


def test_prompt_assigner_labels_unseen_essays_of_each_topic() -> None:
    texts, truth = _topic_essays(seed=5)
    cut = 2 * len(texts) // 3
    assigner = PromptAssigner(seed=0).fit(texts[:cut], truth[:cut])
    assert list(assigner.classes_) == [0, 1, 2, 3]
    assert np.mean(assigner.predict(texts[cut:]) == truth[cut:]) >= 0.97


def test_prompt_assigner_saves_plain_arrays_and_reloads_identically(tmp_path) -> None:
    texts, truth = _topic_essays(seed=6)
    for labels in (truth, (truth > 0).astype(int)):  # several clusters, and two (one weight row)
        assigner = PromptAssigner(seed=0).fit(texts, labels)
        path = assigner.save(tmp_path / "art")
        with np.load(path, allow_pickle=False) as arrays:  # no pickled objects inside
            assert set(arrays.files) == {"vocabulary", "idf", "coef", "intercept", "classes", "fallback",
                                         "word_pattern"}
        loaded = PromptAssigner.load(tmp_path / "art")
        np.testing.assert_array_equal(loaded.predict(texts), assigner.predict(texts))
        assert np.mean(loaded.predict(texts) == labels) >= 0.97
    assert PromptAssigner(seed=0).fit(texts, np.zeros(len(texts), int)).predict(["anything"]).tolist() == [0]


def test_prompt_assigner_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="re-run 04_ensemble"):
        PromptAssigner.load(tmp_path)
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        PromptAssigner().fit(["a b", "c d", "e f"], np.array([0, 1]))
    with pytest.raises(RuntimeError, match="fit or load"):
        PromptAssigner().predict(["text"])


def test_prompt_assigner_edge_cases(tmp_path) -> None:
    texts, truth = _topic_essays(seed=7)
    assigner = PromptAssigner(seed=0).fit(texts, truth)
    assert assigner.predict([]).shape == (0,)
    largest = np.bincount(truth).argmax()
    # no topic word at all (empty, digits, placeholders only): the largest train cluster
    assert assigner.predict(["", "123 456", "@CAPS1 @PERSON2"]).tolist() == [largest] * 3
    path = assigner.save(tmp_path)
    with np.load(path) as arrays:
        changed = dict(arrays) | {"word_pattern": np.asarray(r"\w+")}
    np.savez(path, **changed)
    with pytest.raises(ValueError, match="word pattern"):
        PromptAssigner.load(tmp_path)
