"""Tests for common/prepare/text_features.py: exact counts on a hand-made essay, vocabulary fitting, edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from common.prepare.text_features import FEATURE_COLUMNS, TextFeaturizer, count_syllables, text_features

ESSAY = "The cat sat on the mat. it was happy!\n\nWhy did i go? Because, honestly; I wanted 2 cats."


def test_columns_and_shape() -> None:
    frame = text_features([ESSAY, "Another short essay.", ""])
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert frame.shape == (3, len(FEATURE_COLUMNS))
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert frame.notna().all().all()


def test_hand_made_essay_counts() -> None:
    row = text_features([ESSAY]).iloc[0]
    assert row["characters"] == len(ESSAY)
    assert row["words"] == 19
    assert row["unique_words"] == 17  # "the" twice, "i" and "I"
    assert row["type_token_ratio"] == pytest.approx(17 / 19)
    assert row["paragraphs"] == 2
    assert row["sentences"] == 4
    assert row["mean_sentence_length"] == pytest.approx(19 / 4)
    assert row["std_sentence_length"] == pytest.approx(np.std([6, 3, 4, 6]))
    assert row["long_word_share"] == pytest.approx(2 / 19)  # Because, honestly
    assert row["commas_per_word"] == pytest.approx(1 / 19)
    assert row["semicolons_per_word"] == pytest.approx(1 / 19)
    assert row["questions_per_word"] == pytest.approx(1 / 19)
    assert row["exclamations_per_word"] == pytest.approx(1 / 19)
    assert row["lowercase_sentence_starts"] == 1  # "it was happy"
    assert row["lowercase_i"] == 1
    assert row["capitalisation_errors"] == 2
    assert row["digit_share"] == pytest.approx(1 / len(ESSAY))
    assert row["stopword_share"] > 0
    words = ["The", "cat", "sat", "on", "the", "mat", "it", "was", "happy", "Why", "did", "i", "go", "Because",
             "honestly", "I", "wanted", "2", "cats"]
    syllables = sum(count_syllables(w) for w in words)
    assert row["mean_word_length"] == pytest.approx(sum(map(len, words)) / 19)
    assert row["syllables_per_word"] == pytest.approx(syllables / 19)
    assert row["flesch_reading_ease"] == pytest.approx(206.835 - 1.015 * 19 / 4 - 84.6 * syllables / 19)
    assert row["flesch_kincaid_grade"] == pytest.approx(0.39 * 19 / 4 + 11.8 * syllables / 19 - 15.59)


@pytest.mark.parametrize(("word", "expected"), [("cat", 1), ("happy", 2), ("because", 2), ("table", 2),
                                                ("the", 1), ("2", 1), ("beautiful", 3)])
def test_count_syllables(word: str, expected: int) -> None:
    assert count_syllables(word) == expected


def test_spelling_vocabulary_is_learnt_from_essays() -> None:
    corpus = ["The cat sat on the mat."] * 3 + ["The dog sat."]
    featurizer = TextFeaturizer(min_doc_freq=3).fit(corpus)
    assert "cat" in featurizer.vocabulary_
    assert "dog" not in featurizer.vocabulary_
    rates = featurizer.transform(["The cat sat.", "Teh dog sat.", "The 1999 cat"])["spelling_error_rate"]
    np.testing.assert_allclose(rates, [0.0, 2 / 3, 0.0])


def test_extra_vocabulary_is_known() -> None:
    featurizer = TextFeaturizer(min_doc_freq=5, extra_vocabulary=["Zebra"]).fit(["zebra cat"])
    assert featurizer.transform(["zebra cat"])["spelling_error_rate"].iloc[0] == pytest.approx(0.5)


def test_empty_and_blank_essays_give_zeros() -> None:
    frame = text_features(["", "   \n\n  ", "..."])
    assert (frame.drop(columns="characters") == 0).all().all()
    assert frame["characters"].tolist() == [0, 7, 3]


def test_only_empty_essays() -> None:
    frame = text_features([""])
    assert (frame == 0).all().all()


def test_curly_apostrophes_join_words() -> None:
    row = text_features(["I don\u2019t know."]).iloc[0]
    assert row["words"] == 3


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="single string"):
        text_features("just one essay")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        text_features(["fine", None])  # type: ignore[list-item]
    with pytest.raises(NotFittedError):
        TextFeaturizer().transform(["text"])


def test_index_is_positional_for_series_input() -> None:
    texts = pd.Series([ESSAY, "Short one."], index=[10, 20])
    frame = text_features(texts)
    assert list(frame.index) == [0, 1]


def test_featurizer_restored_from_its_vocabulary_gives_the_same_features():
    texts = ["The cat sat on the mat.", "The dog sat on a log.", "A cat and a dog sat.", "Teh cat sat."]
    fitted = TextFeaturizer(min_doc_freq=2).fit(texts)
    restored = TextFeaturizer.from_vocabulary(sorted(fitted.vocabulary_))
    pd.testing.assert_frame_equal(fitted.transform(texts), restored.transform(texts))
