"""Exact and near-duplicate essays: origin matching against the external corpus and duplicate groups.

Two essays match when their normalised texts are equal (case, Unicode form and all whitespace
differences ignored), or when the cosine similarity of their TF-IDF vectors reaches a threshold.
Candidates come from an all-pairs product over distinctive words only (English stop words and words
in more than `max_df` of the essays dropped), which stays sparse and fast: essays on the same prompt
share topic words, but only copies of one essay share most of their rare words. Each candidate is
then confirmed on the TF-IDF of every word, so essays that merely share a few rare words never match.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def normalize_text(text: str) -> str:
    """Unicode NFKC, lower case, every run of whitespace (newlines, NBSP) made one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@dataclass
class Pairs:
    """Matching pairs (i < j) over one list of texts, with their cosine similarity (1.0 for exact)."""

    left: np.ndarray
    right: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.left)


def duplicate_pairs(
    texts: Sequence[str], threshold: float = 0.9, max_df: float = 0.05, chunk_size: int = 2048
) -> Pairs:
    """All pairs (i < j) of texts that are exact (after `normalize_text`) or near duplicates.

    `threshold` is the cosine similarity, on distinctive-word TF-IDF vectors, at which two different
    texts count as near duplicates.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    normalized = [normalize_text(t) for t in texts]
    left, right, sims = [], [], []

    # Exact matches: equal normalised text.
    first_of: dict[str, int] = {}
    for i, text in enumerate(normalized):
        j = first_of.setdefault(text, i)
        if j != i:
            left.append(j)
            right.append(i)
            sims.append(1.0)

    if len(texts) > 1:
        cand_left, cand_right = _candidates(_distinctive_tfidf(normalized, max_df), threshold, chunk_size)
        if len(cand_left):
            # Confirm on every word: two essays sharing their few rare words are not copies.
            full = TfidfVectorizer(lowercase=False, sublinear_tf=True, dtype=np.float32).fit_transform(normalized)
            sim = np.asarray(full[cand_left].multiply(full[cand_right]).sum(axis=1)).ravel()
            keep = sim >= threshold
            left.extend(cand_left[keep].tolist())
            right.extend(cand_right[keep].tolist())
            sims.extend(sim[keep].tolist())

    pairs = pd.DataFrame({"left": left, "right": right, "sim": sims})
    pairs = pairs.sort_values("sim", ascending=False).drop_duplicates(["left", "right"]).sort_values(
        ["left", "right"]
    )
    return Pairs(
        left=pairs["left"].to_numpy(np.int64),
        right=pairs["right"].to_numpy(np.int64),
        similarity=np.minimum(pairs["sim"].to_numpy(np.float64), 1.0),
    )


def _candidates(x: sp.csr_matrix, threshold: float, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) whose distinctive-word cosine is close to the threshold or above."""
    left, right = [], []
    n = x.shape[0]
    for start in tqdm(range(0, n, chunk_size), desc="near-duplicates", unit="chunk", leave=False):
        # Upper triangle only: this chunk against itself and every later text.
        block = (x[start : start + chunk_size] @ x[start:].T).tocoo()
        rows, cols = block.row + start, block.col + start
        keep = (block.data >= _CANDIDATE_SLACK * threshold) & (rows < cols)
        left.append(rows[keep])
        right.append(cols[keep])
    return np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64)


_CANDIDATE_SLACK = 0.9


def _distinctive_tfidf(normalized: list[str], max_df: float) -> sp.csr_matrix:
    """Sublinear TF-IDF over words outside the stop list and in at most `max_df` of the texts."""
    n = len(normalized)
    # With few texts a share-based cut would drop everything: keep words in up to max(2, max_df*n) texts.
    max_count = max(2, int(max_df * n))
    vectorizer = TfidfVectorizer(
        lowercase=False,
        stop_words="english",
        sublinear_tf=True,
        max_df=max_count if max_count < n else 1.0,
        token_pattern=r"(?u)\b[^\W\d_]{2,}\b",
        dtype=np.float32,
    )
    try:
        return vectorizer.fit_transform(normalized).tocsr()
    except ValueError:  # no word survives the cuts (e.g. texts of numbers only)
        return sp.csr_matrix((n, 1), dtype=np.float32)


def connected_groups(n: int, pairs: Pairs) -> np.ndarray:
    """Group id per item (0..n_groups-1, in order of first appearance) joining every matched pair."""
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs.left, pairs.right)), shape=(n, n))
    _, labels = sp.csgraph.connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return remap[labels]


@dataclass
class OriginMatch:
    """Per train essay: origin ('persuade' or 'other'), the best corpus match and its similarity.

    `train_groups` joins train essays that duplicate each other, directly or through a shared corpus
    essay; `corpus_keep` marks corpus essays that match no train essay and are the first of their
    own duplicate group (the external essays safe to use beside train).
    """

    origin: np.ndarray
    corpus_index: np.ndarray
    similarity: np.ndarray
    train_groups: np.ndarray
    corpus_keep: np.ndarray
    n_exact: int
    n_near: int


def match_origin(
    train_texts: Sequence[str], corpus_texts: Sequence[str], threshold: float = 0.9, max_df: float = 0.05
) -> OriginMatch:
    """Match train essays to corpus essays (exact or near duplicates) and group duplicates."""
    n_train, n_corpus = len(train_texts), len(corpus_texts)
    pairs = duplicate_pairs([*train_texts, *corpus_texts], threshold=threshold, max_df=max_df)
    is_cross = (pairs.left < n_train) & (pairs.right >= n_train)

    best_sim = np.zeros(n_train)
    best_corpus = np.full(n_train, -1, dtype=np.int64)
    cross = pd.DataFrame(
        {"train": pairs.left[is_cross], "corpus": pairs.right[is_cross] - n_train, "sim": pairs.similarity[is_cross]}
    )
    # Exact copies are looked up directly: duplicate_pairs links each copy to the first one only, so a
    # second train copy of a corpus essay has no pair of its own with the corpus.
    corpus_of_text: dict[str, int] = {}
    for j, text in enumerate(corpus_texts):
        corpus_of_text.setdefault(normalize_text(text), j)
    exact = [(i, corpus_of_text.get(normalize_text(t), -1)) for i, t in enumerate(train_texts)]
    exact_frame = pd.DataFrame([(i, j, 1.0) for i, j in exact if j >= 0], columns=["train", "corpus", "sim"])
    cross = pd.concat([exact_frame, cross], ignore_index=True)
    if len(cross):
        best = cross.sort_values(["sim", "corpus"], ascending=[False, True]).drop_duplicates("train")
        best_corpus[best["train"].to_numpy()] = best["corpus"].to_numpy()
        best_sim[best["train"].to_numpy()] = best["sim"].to_numpy()
    matched = best_corpus >= 0
    origin = np.where(matched, "persuade", "other")

    groups_all = connected_groups(n_train + n_corpus, pairs)
    train_groups = groups_all[:n_train]
    _, train_groups = np.unique(train_groups, return_inverse=True)
    # Keep 1st corpus essay of each duplicate group, unless the group holds a train essay.
    train_group_ids = set(groups_all[:n_train].tolist())
    corpus_groups = groups_all[n_train:]
    first_in_group = ~pd.Series(corpus_groups).duplicated().to_numpy()
    corpus_keep = first_in_group & ~np.isin(corpus_groups, list(train_group_ids))

    n_exact = len(exact_frame)
    log.info(
        "origin: %d of %d train essays in the corpus (%d exact after normalisation, %d near duplicates); "
        "%d of %d corpus essays kept as external",
        matched.sum(), n_train, n_exact, matched.sum() - n_exact, corpus_keep.sum(), n_corpus,
    )
    return OriginMatch(
        origin=origin,
        corpus_index=best_corpus,
        similarity=best_sim,
        train_groups=train_groups.astype(np.int64),
        corpus_keep=corpus_keep,
        n_exact=n_exact,
        n_near=int(matched.sum() - n_exact),
    )
