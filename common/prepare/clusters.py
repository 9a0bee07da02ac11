"""Recover the prompt (essay topic) each essay answers, by unsupervised text clustering.

Essays written to the same prompt share a small set of content words (the prompt's names, places and
key terms) that essays to other prompts rarely use, so topic is by far the strongest signal in their
word counts. The method:

1. Sublinear TF-IDF over alphabetic words of two or more letters, without English stop words, words
   in fewer than min(5, 1% of) essays, or words in over 90% of essays. Placeholder tokens glued to a symbol,
   digit or underscore (``@CAPS1``, ``Generic_Name``) are not words under this pattern and drop out.
2. LSA: TruncatedSVD to 100 dimensions, then L2-normalise, so Euclidean KMeans clusters by cosine
   similarity and the noise of rare words is averaged away.
3. Number of clusters, when not given: KMeans for every k in 2..max_clusters on a random subsample,
   and the k with the highest cosine silhouette. Prompts are compact, well separated groups, so
   splitting one or merging two both lower the silhouette. The search uses only the first
   max_clusters LSA dimensions: that many directions can hold that many topics, and dropping the
   rest removes essay-specific noise that otherwise shrinks the silhouette's margin between the
   right k and a k that merges two similar prompts (on ASAP from 0.005 to 0.035).
4. KMeans with several inits on all essays, then refinement: a linear SVM fitted on the full TF-IDF
   of the essays assigned most confidently (largest margin between the nearest and second-nearest
   cluster) re-assigns every essay, twice. The classifier weighs each word by how well it separates
   the clusters, which fixes most borderline essays that KMeans assigns by overall similarity.

Labels are renumbered so that cluster 0 is the largest. Results are deterministic for a given seed
(everything runs on one thread, so they do not depend on the core count either).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.metrics.pairwise import cosine_distances
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

WORD_PATTERN = r"(?u)(?<![@\w])[^\W\d_]{2,}\b"
"""Alphabetic words of 2+ letters; a run of letters joined to '@', a digit or '_' is not a word."""

LSA_DIMENSIONS = 100
SEARCH_SAMPLE = 3000
"""Essays in the subsample the number of clusters is chosen on."""
SEARCH_INITS = 10
FINAL_INITS = 10
REFINE_ROUNDS = 2
CONFIDENT_SHARE = 0.7
"""Share of each cluster, by assignment margin, that trains the refinement classifier."""


@dataclass
class ClusterResult:
    """Cluster of every essay.

    labels: int array of shape (n_essays,), values 0..n_clusters-1, cluster 0 the largest.
    selection_scores: silhouette of every k tried in the search; empty when k was given.
    """

    labels: np.ndarray
    n_clusters: int
    selection_scores: dict[int, float] = field(default_factory=dict)


def recover_prompts(
    texts: Sequence[str], n_clusters: int = 0, max_clusters: int = 20, seed: int = 42
) -> ClusterResult:
    """Cluster essays by the prompt they answer.

    texts: the essays. n_clusters: number of prompts, or 0 to choose it in 2..max_clusters by
    silhouette. seed: seeds every random step; the same seed gives the same labels.
    Runs single-threaded: on a small machine shared with other work, KMeans' OpenMP threads spin
    against BLAS threads and other processes and run up to 10x slower (ASAP: 3 s single-threaded,
    3 to 40 s threaded), and one thread also makes the labels independent of the core count.
    """
    n_essays = len(texts)
    if n_essays == 0:
        raise ValueError("recover_prompts: no essays given; pass at least 2 texts.")
    blank = [i for i, text in enumerate(texts) if not text or not text.strip()]
    if blank:
        raise ValueError(
            f"recover_prompts: {len(blank)} empty essay text(s), first at index {blank[0]}; "
            "drop empty essays before clustering."
        )
    if n_clusters < 0:
        raise ValueError(f"recover_prompts: n_clusters={n_clusters}; pass a positive k, or 0 to choose it.")
    if n_clusters == 0 and max_clusters < 2:
        raise ValueError(f"recover_prompts: max_clusters={max_clusters}; the search needs at least 2.")
    needed = n_clusters if n_clusters else 3
    if n_essays < max(needed, 2):
        raise ValueError(
            f"recover_prompts: {n_essays} essay(s) for "
            + (f"{n_clusters} clusters" if n_clusters else "a search over k (a silhouette needs 3 essays)")
            + f"; pass at least {max(needed, 2)} essays."
        )

    with threadpool_limits(limits=1):
        return _cluster(texts, n_clusters, max_clusters, seed)


def name_clusters(
    labels: np.ndarray, known_prompts: Sequence[str | None]
) -> tuple[dict[int, str], dict[str, float]]:
    """Name each cluster after the majority known prompt of its members, and score the clustering.

    labels: int array of shape (n_essays,). known_prompts: prompt of each essay, None where unknown.
    A cluster without a known member is named f"cluster_{k}". When clusters share a majority prompt,
    the largest keeps the name and the smaller ones get "#2", "#3"... in decreasing size. Ties in a
    majority go to the alphabetically first prompt.
    Returns (names, {"purity", "ari", "n_known"}); purity and ARI are over the essays with a known
    prompt, NaN when there are none.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"name_clusters: labels must be a 1-D int array, got {labels.dtype} {labels.shape}.")
    if len(known_prompts) != len(labels):
        raise ValueError(
            f"name_clusters: {len(labels)} labels but {len(known_prompts)} known prompts; "
            "pass one prompt (or None) per essay."
        )
    not_text = [
        i for i, prompt in enumerate(known_prompts) if prompt is not None and not isinstance(prompt, str)
    ]
    if not_text:
        raise ValueError(
            f"name_clusters: known_prompts[{not_text[0]}] is {known_prompts[not_text[0]]!r}, not a str "
            f"({len(not_text)} such); pass None for an essay with no known prompt (NaN included)."
        )
    known = np.array([prompt is not None for prompt in known_prompts], dtype=bool)
    clusters, counts_by_cluster = np.unique(labels, return_counts=True)
    sizes = dict(zip(clusters.tolist(), counts_by_cluster.tolist(), strict=True))

    majority: dict[int, str] = {}
    majority_counts: dict[int, int] = {}
    for cluster in sizes:
        members = np.flatnonzero((labels == cluster) & known)
        counts = Counter(known_prompts[i] for i in members)
        if counts:
            prompt, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
            majority[cluster], majority_counts[cluster] = prompt, count

    names: dict[int, str] = {}
    taken: Counter[str] = Counter()
    for cluster in sorted(sizes, key=lambda c: (-sizes[c], c)):
        if cluster not in majority:
            names[cluster] = f"cluster_{cluster}"
            continue
        prompt = majority[cluster]
        taken[prompt] += 1
        names[cluster] = prompt if taken[prompt] == 1 else f"{prompt}#{taken[prompt]}"
    names = dict(sorted(names.items()))

    n_known = int(known.sum())
    if n_known == 0:
        return names, {"purity": float("nan"), "ari": float("nan"), "n_known": 0.0}
    known_labels = labels[known]
    known_names = [prompt for prompt in known_prompts if prompt is not None]
    quality = {
        "purity": sum(majority_counts.values()) / n_known,
        "ari": float(adjusted_rand_score(known_names, known_labels)),
        "n_known": float(n_known),
    }
    return names, quality


def _cluster(texts: Sequence[str], n_clusters: int, max_clusters: int, seed: int) -> ClusterResult:
    """The method of the module docstring, on validated input."""
    tfidf = _tfidf(texts)
    embedding = _lsa(tfidf, seed)
    selection_scores: dict[int, float] = {}
    if n_clusters == 0:
        selection_scores = _silhouette_by_k(embedding, max_clusters, seed)
        n_clusters = max(selection_scores, key=lambda k: selection_scores[k])
        logger.info(
            "chose %d clusters by silhouette (%s)",
            n_clusters,
            ", ".join(f"{k}: {score:.3f}" for k, score in selection_scores.items()),
        )
    if n_clusters == 1:
        return ClusterResult(np.zeros(len(texts), dtype=np.int64), 1, selection_scores)

    kmeans = KMeans(n_clusters, n_init=FINAL_INITS, random_state=seed).fit(embedding)
    labels = kmeans.labels_
    margins = _margins(embedding @ normalize(kmeans.cluster_centers_).T)
    for _ in range(REFINE_ROUNDS):
        labels, margins = _refine(tfidf, labels, margins, seed)

    labels = _by_size(labels)
    found = int(labels.max()) + 1
    if found < n_clusters:
        logger.warning("refinement emptied %d of %d clusters", n_clusters - found, n_clusters)
    return ClusterResult(labels, found, selection_scores)


def _tfidf(texts: Sequence[str]) -> sparse.csr_matrix:
    """Sublinear TF-IDF of the topic words: shape (n_essays, n_words), rows L2-normalised."""
    n_essays = len(texts)
    vectorizer = TfidfVectorizer(
        token_pattern=WORD_PATTERN,
        stop_words="english",
        min_df=min(5, max(1, n_essays // 100)),
        max_df=0.9,
        sublinear_tf=True,
        dtype=np.float32,
    )
    try:
        tfidf = vectorizer.fit_transform(texts)
    except ValueError as error:
        raise ValueError(
            f"recover_prompts: no topic words in the {n_essays} essays ({error}); "
            "every word is a stop word, a placeholder or number, or in over 90% of the essays."
        ) from error
    logger.info("TF-IDF: %d essays x %d words", *tfidf.shape)
    return tfidf


def _lsa(tfidf: sparse.csr_matrix, seed: int) -> np.ndarray:
    """LSA embedding: shape (n_essays, <= LSA_DIMENSIONS), rows L2-normalised (zero rows stay zero)."""
    dimensions = min(LSA_DIMENSIONS, tfidf.shape[0] - 1, tfidf.shape[1] - 1)
    if dimensions < 2:
        return normalize(tfidf.toarray())
    svd = TruncatedSVD(dimensions, random_state=seed)
    return normalize(svd.fit_transform(tfidf))


def _silhouette_by_k(embedding: np.ndarray, max_clusters: int, seed: int) -> dict[int, float]:
    """Cosine silhouette of KMeans with each k in 2..max_clusters, on a random subsample of essays and
    the first max_clusters LSA dimensions. A k whose KMeans finds a single distinct cluster (all
    sampled essays identical) scores -1, the lowest silhouette."""
    n_essays = embedding.shape[0]
    rows = np.arange(n_essays)
    if n_essays > SEARCH_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n_essays, SEARCH_SAMPLE, replace=False))
    sample = normalize(embedding[rows, : max(2, max_clusters)])
    distances = cosine_distances(sample)
    scores: dict[int, float] = {}
    for k in tqdm(
        range(2, min(max_clusters, len(rows) - 1) + 1), desc="choosing k", disable=None, leave=False
    ):
        labels = KMeans(k, n_init=SEARCH_INITS, random_state=seed).fit_predict(sample)
        n_found = len(np.unique(labels))
        scores[k] = float(silhouette_score(distances, labels, metric="precomputed")) if n_found > 1 else -1.0
    return scores


def _margins(scores: np.ndarray) -> np.ndarray:
    """Best minus second-best score per row of an (n_essays, n_clusters) score matrix."""
    top_two = np.partition(scores, scores.shape[1] - 2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def _refine(
    tfidf: sparse.csr_matrix, labels: np.ndarray, margins: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-assign every essay with a linear SVM fitted on the most confident share of each cluster."""
    confident = np.zeros(len(labels), dtype=bool)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        threshold = np.quantile(margins[members], 1.0 - CONFIDENT_SHARE)
        confident[members[margins[members] >= threshold]] = True
    classifier = LinearSVC(C=1.0, random_state=seed).fit(tfidf[confident], labels[confident])
    decision = classifier.decision_function(tfidf)
    if decision.ndim == 1:
        return classifier.classes_[(decision > 0).astype(int)], np.abs(decision)
    return classifier.classes_[decision.argmax(axis=1)], _margins(decision)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..n-1 by decreasing cluster size, ties by the old label."""
    clusters, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((clusters, -sizes))
    rank = np.empty(len(clusters), dtype=np.int64)
    rank[order] = np.arange(len(clusters))
    return rank[inverse]


class PromptAssigner:
    """Assigns new essays to the prompt clusters found on the train essays (for 05_infer's test essays).

    A linear SVM on the sublinear TF-IDF of the topic words (the same words as `recover_prompts`),
    fitted on essays and their cluster labels. It is saved as plain arrays (vocabulary, idf, weights),
    not a pickle, so it loads under any scikit-learn version (Kaggle's image pins its own), and the
    transform at load time is a fixed-vocabulary count plus three array operations.

    Attributes after `fit` (or `load`): `vocabulary_` (words), `idf_`, `coef_` (n_clusters, n_words) or
    (1, n_words) for two clusters, `intercept_`, `classes_` (the cluster ids), `fallback_` (the largest
    cluster, for essays without a topic word). The word pattern is saved too and checked on load.
    """

    FILE = "prompt_assigner.npz"

    def __init__(self, seed: int = 42):
        self.seed = seed

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> PromptAssigner:
        labels = np.asarray(labels)
        if len(texts) != len(labels):
            raise ValueError(f"PromptAssigner.fit: {len(texts)} texts but {len(labels)} labels")
        vectorizer = TfidfVectorizer(
            token_pattern=WORD_PATTERN, stop_words="english", min_df=min(5, max(1, len(texts) // 100)),
            max_df=0.9, sublinear_tf=True, dtype=np.float32,
        )
        tfidf = vectorizer.fit_transform(texts)
        self.vocabulary_ = vectorizer.get_feature_names_out().astype(str)
        self.idf_ = vectorizer.idf_.astype(np.float64)
        self.classes_, sizes = np.unique(labels, return_counts=True)
        self.fallback_ = self.classes_[int(np.argmax(sizes))]
        if len(self.classes_) == 1:
            self.coef_, self.intercept_ = np.zeros((1, tfidf.shape[1])), np.zeros(1)
            return self
        with threadpool_limits(limits=1):
            svm = LinearSVC(C=1.0, random_state=self.seed).fit(tfidf, labels)
        self.coef_, self.intercept_ = svm.coef_.astype(np.float64), svm.intercept_.astype(np.float64)
        return self

    def _tfidf(self, texts: Sequence[str]) -> sparse.csr_matrix:
        from sklearn.feature_extraction.text import CountVectorizer

        counts = CountVectorizer(token_pattern=WORD_PATTERN, vocabulary=list(self.vocabulary_)).transform(
            [text if isinstance(text, str) else "" for text in texts]).astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)  # sublinear tf
        return normalize(counts.multiply(self.idf_).tocsr())

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Cluster id of every essay; an essay without any topic word goes to the largest train cluster."""
        if not hasattr(self, "classes_"):
            raise RuntimeError("PromptAssigner: call fit or load first")
        if len(texts) == 0:
            return np.empty(0, dtype=self.classes_.dtype)
        if len(self.classes_) == 1:
            return np.full(len(texts), self.classes_[0])
        tfidf = self._tfidf(texts)
        decision = np.asarray(tfidf @ self.coef_.T) + self.intercept_
        if decision.shape[1] == 1:
            labels = self.classes_[(decision[:, 0] > 0).astype(int)]
        else:
            labels = self.classes_[decision.argmax(axis=1)]
        labels[tfidf.getnnz(axis=1) == 0] = self.fallback_
        return labels

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILE
        np.savez_compressed(path, vocabulary=self.vocabulary_, idf=self.idf_, coef=self.coef_,
                            intercept=self.intercept_, classes=self.classes_, fallback=np.asarray(self.fallback_),
                            word_pattern=np.asarray(WORD_PATTERN))
        return path

    @classmethod
    def load(cls, folder: Path) -> PromptAssigner:
        path = folder / cls.FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prompt assigner; re-run 04_ensemble")
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"vocabulary", "idf", "coef", "intercept", "classes", "fallback", "word_pattern"} - set(arrays.files)
            if missing:
                raise ValueError(f"{path}: lacks {sorted(missing)}; re-run 04_ensemble with this code")
            if str(arrays["word_pattern"]) != WORD_PATTERN:
                raise ValueError(f"{path}: saved for the word pattern {str(arrays['word_pattern'])!r}, this code uses "
                                 f"{WORD_PATTERN!r}; re-run 04_ensemble with this code")
            assigner = cls()
            assigner.vocabulary_, assigner.idf_ = arrays["vocabulary"], arrays["idf"]
            assigner.coef_, assigner.intercept_ = arrays["coef"], arrays["intercept"]
            assigner.classes_, assigner.fallback_ = arrays["classes"], arrays["fallback"][()]
        if assigner.coef_.shape[1] != len(assigner.vocabulary_):
            raise ValueError(f"{path}: {assigner.coef_.shape[1]} weights for {len(assigner.vocabulary_)} words")
        return assigner
