"""Hand-made essay features (length, structure, punctuation, spelling, readability) for the stacker.

`TextFeaturizer.fit` learns a spelling vocabulary from the essays themselves: a word (lower-cased) is
"known" if it appears in at least `min_doc_freq` essays. No label is used, so fitting on train and test
texts together is not a leak; a typo shared by many essays counts as known. `transform` returns one
row per essay with the numeric columns of `FEATURE_COLUMNS`; an empty essay gives a row of zeros.

Definitions (per essay):
- words: tokens of letters/digits with inner apostrophes ("don't" is one word); characters: len(text).
- paragraphs: lines holding a word (the essays separate paragraphs with newlines or blank lines).
- sentences: segments ending in ".", "!" or "?" (or the end of the text) that hold at least one word.
- syllables: vowel groups ("aeiouy") minus a silent final "e", at least one per word; digits count one.
- flesch_reading_ease = 206.835 - 1.015 * words / sentences - 84.6 * syllables / words.
- flesch_kincaid_grade = 0.39 * words / sentences + 11.8 * syllables / words - 15.59.
- capitalisation_errors: sentences starting with a lower-case letter plus lone lower-case "i" ("i",
  "i'm", "i've" ...).
- spelling_error_rate: share of words with a letter whose lower-case form is not in the vocabulary.

Speed: the text is scanned once per essay in Python (regular expressions); everything per word is
computed once per distinct word and gathered with numpy, so 20,000 essays of 400 words take seconds.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

logger = logging.getLogger(__name__)

FEATURE_COLUMNS: tuple[str, ...] = (
    "characters",
    "words",
    "unique_words",
    "type_token_ratio",
    "paragraphs",
    "sentences",
    "mean_sentence_length",
    "std_sentence_length",
    "mean_word_length",
    "long_word_share",
    "commas_per_word",
    "semicolons_per_word",
    "questions_per_word",
    "exclamations_per_word",
    "lowercase_sentence_starts",
    "lowercase_i",
    "capitalisation_errors",
    "spelling_error_rate",
    "syllables_per_word",
    "flesch_reading_ease",
    "flesch_kincaid_grade",
    "stopword_share",
    "digit_share",
)

LONG_WORD_CHARS = 7

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_SENTENCE_END_RE = re.compile(r"[.!?]+")
_DIGIT_RE = re.compile(r"\d")
_VOWEL_GROUP_RE = re.compile(r"[aeiouy]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of essays, got a single string")
    out = list(texts)
    for row, text in enumerate(out):
        if not isinstance(text, str):
            raise ValueError(f"texts[{row}] is {type(text).__name__}, not str; fill missing essays with ''")
    return out


def _tokens(text: str) -> list[str]:
    return _WORD_RE.findall(text.translate(_APOSTROPHES))


def count_syllables(word: str) -> int:
    """Heuristic syllable count of one word: vowel groups, minus a silent final 'e', at least 1."""
    w = word.lower()
    if not any(ch.isalpha() for ch in w):
        return 1
    n = len(_VOWEL_GROUP_RE.findall(w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ye")):
        n -= 1
    return max(n, 1)


class TextFeaturizer(BaseEstimator):
    """Essay texts -> numeric feature frame, with a spelling vocabulary learnt from essays.

    Args:
        min_doc_freq: a lower-cased word is known if it occurs in at least this many fitted essays.
        extra_vocabulary: words always treated as known (e.g. a word list shipped with the data).

    Attributes after `fit`:
        vocabulary_: frozenset of known lower-case words.
    """

    def __init__(self, min_doc_freq: int = 3, extra_vocabulary: Iterable[str] | None = None):
        self.min_doc_freq = min_doc_freq
        self.extra_vocabulary = extra_vocabulary

    def fit(self, texts: Sequence[str]) -> TextFeaturizer:
        """Learn the vocabulary from `texts` (n essays); labels are never needed."""
        if self.min_doc_freq < 1:
            raise ValueError(f"min_doc_freq must be >= 1, got {self.min_doc_freq}")
        doc_freq: Counter[str] = Counter()
        for text in _check_texts(texts):
            doc_freq.update({token.lower() for token in _tokens(text)})
        known = {word for word, count in doc_freq.items() if count >= self.min_doc_freq}
        known.update(word.lower() for word in (self.extra_vocabulary or ()))
        self.vocabulary_ = frozenset(known)
        logger.debug("spelling vocabulary: %d of %d distinct words", len(known), len(doc_freq))
        return self

    @classmethod
    def from_vocabulary(cls, words: Iterable[str], min_doc_freq: int = 3) -> TextFeaturizer:
        """A fitted featurizer from a saved vocabulary (e.g. the ensemble's text_vocabulary.json)."""
        featurizer = cls(min_doc_freq=min_doc_freq)
        featurizer.vocabulary_ = frozenset(w.lower() for w in words)
        return featurizer

    def fit_transform(self, texts: Sequence[str], y: object = None) -> pd.DataFrame:
        """`fit(texts)` then `transform(texts)`."""
        return self.fit(texts).transform(texts)

    def transform(self, texts: Sequence[str]) -> pd.DataFrame:
        """Feature frame, shape (n essays, len(FEATURE_COLUMNS)), float64, index 0..n-1."""
        if not hasattr(self, "vocabulary_"):
            raise NotFittedError("TextFeaturizer is not fitted yet; call fit(texts) first")
        texts = _check_texts(texts)
        n = len(texts)
        per_essay = np.zeros((n, 8))  # chars, paragraphs, commas, semicolons, ?, !, digits, lower starts
        sentence_lengths: list[int] = []
        sentence_essay: list[int] = []
        words: list[str] = []
        word_counts = np.zeros(n, dtype=np.int64)
        for row, raw in enumerate(texts):
            text = raw.translate(_APOSTROPHES)
            lower_starts = 0
            n_words = 0
            for segment in _SENTENCE_END_RE.split(text):
                tokens = _WORD_RE.findall(segment)
                if not tokens:
                    continue
                sentence_lengths.append(len(tokens))
                n_words += len(tokens)
                words.extend(tokens)
                if tokens[0][0].islower():
                    lower_starts += 1
            sentence_essay.extend([row] * (len(sentence_lengths) - len(sentence_essay)))
            word_counts[row] = n_words
            per_essay[row] = (
                len(raw),
                sum(1 for line in text.split("\n") if _WORD_RE.search(line)),
                text.count(","),
                text.count(";"),
                text.count("?"),
                text.count("!"),
                len(_DIGIT_RE.findall(text)),
                lower_starts,
            )
        return self._assemble(n, per_essay, word_counts, words, np.asarray(sentence_lengths, dtype=np.float64),
                              np.asarray(sentence_essay, dtype=np.int64))

    def _assemble(
        self,
        n: int,
        per_essay: np.ndarray,
        word_counts: np.ndarray,
        words: list[str],
        sentence_lengths: np.ndarray,
        sentence_essay: np.ndarray,
    ) -> pd.DataFrame:
        essay_of_word = np.repeat(np.arange(n), word_counts)
        codes, uniques = pd.factorize(pd.Series(words, dtype=object), sort=False)
        uniques = list(uniques)
        lower = [w.lower() for w in uniques]
        stop = ENGLISH_STOP_WORDS
        length = np.array([len(w) for w in uniques], dtype=np.float64)
        syllables = np.array([count_syllables(w) for w in lower], dtype=np.float64)
        has_letter = np.array([not w.isdigit() for w in lower], dtype=bool)
        misspelt = np.array([h and w not in self.vocabulary_ for w, h in zip(lower, has_letter, strict=True)])
        stopword = np.array([w in stop for w in lower], dtype=bool)
        lone_i = np.array([w == "i" or w.startswith("i'") for w in uniques], dtype=bool)
        lower_codes, _ = pd.factorize(pd.Series(lower, dtype=object), sort=False)
        lower_codes = np.asarray(lower_codes, dtype=np.int64)

        def per_word_sum(values: np.ndarray) -> np.ndarray:
            if codes.size == 0:
                return np.zeros(n)
            return np.bincount(essay_of_word, weights=values[codes].astype(np.float64), minlength=n)

        n_words = word_counts.astype(np.float64)
        if codes.size:
            n_lower = int(lower_codes.max()) + 1
            pairs = np.sort(essay_of_word * n_lower + lower_codes[codes])
            first = np.concatenate(([True], pairs[1:] != pairs[:-1]))
            unique_words = np.bincount(pairs[first] // n_lower, minlength=n).astype(np.float64)
        else:
            unique_words = np.zeros(n)
        n_sentences = np.bincount(sentence_essay, minlength=n).astype(np.float64)
        len_sum = np.bincount(sentence_essay, weights=sentence_lengths, minlength=n)
        len_sq = np.bincount(sentence_essay, weights=sentence_lengths**2, minlength=n)
        mean_len = _ratio(len_sum, n_sentences)
        std_len = np.sqrt(np.maximum(_ratio(len_sq, n_sentences) - mean_len**2, 0.0))
        syll_per_word = _ratio(per_word_sum(syllables), n_words)
        words_per_sentence = _ratio(n_words, n_sentences)
        has_words = n_words > 0
        lowercase_i = per_word_sum(lone_i)
        chars = per_essay[:, 0]
        features = {
            "characters": chars,
            "words": n_words,
            "unique_words": unique_words,
            "type_token_ratio": _ratio(unique_words, n_words),
            "paragraphs": per_essay[:, 1],
            "sentences": n_sentences,
            "mean_sentence_length": mean_len,
            "std_sentence_length": std_len,
            "mean_word_length": _ratio(per_word_sum(length), n_words),
            "long_word_share": _ratio(per_word_sum(length >= LONG_WORD_CHARS), n_words),
            "commas_per_word": _ratio(per_essay[:, 2], n_words),
            "semicolons_per_word": _ratio(per_essay[:, 3], n_words),
            "questions_per_word": _ratio(per_essay[:, 4], n_words),
            "exclamations_per_word": _ratio(per_essay[:, 5], n_words),
            "lowercase_sentence_starts": per_essay[:, 7],
            "lowercase_i": lowercase_i,
            "capitalisation_errors": per_essay[:, 7] + lowercase_i,
            "spelling_error_rate": _ratio(per_word_sum(misspelt), n_words),
            "syllables_per_word": syll_per_word,
            "flesch_reading_ease": np.where(
                has_words, 206.835 - 1.015 * words_per_sentence - 84.6 * syll_per_word, 0.0
            ),
            "flesch_kincaid_grade": np.where(
                has_words, 0.39 * words_per_sentence + 11.8 * syll_per_word - 15.59, 0.0
            ),
            "stopword_share": _ratio(per_word_sum(stopword), n_words),
            "digit_share": _ratio(per_essay[:, 6], chars),
        }
        return pd.DataFrame({name: np.asarray(features[name], dtype=np.float64) for name in FEATURE_COLUMNS})


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, 0 where the denominator is 0."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def text_features(texts: Sequence[str], min_doc_freq: int = 3) -> pd.DataFrame:
    """Features of `texts` with the spelling vocabulary fitted on the same texts (no labels involved).

    Returns a frame of shape (len(texts), len(FEATURE_COLUMNS)); see the module docstring.
    """
    return TextFeaturizer(min_doc_freq=min_doc_freq).fit_transform(texts)
