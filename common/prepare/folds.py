"""Cross-validation folds: grouped so duplicates never straddle folds, stratified by score, prompt and origin.

Built on scikit-learn's `StratifiedGroupKFold`, with duplicate groups as groups and a label that
combines score, origin and prompt cluster, so every fold gets a similar mix of all three;
`group_by="prompt"` instead makes each fold hold out whole prompt clusters (unseen-prompt CV).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def make_folds(
    scores: np.ndarray,
    duplicate_groups: np.ndarray,
    prompt_clusters: np.ndarray,
    origins: np.ndarray,
    n_folds: int,
    seed: int,
    group_by: Literal["duplicates", "prompt"] = "duplicates",
) -> np.ndarray:
    """Fold number (0..n_folds-1) per essay.

    Args:
        scores: (n,) integer scores 1-6.
        duplicate_groups: (n,) id of each essay's duplicate group; a group never spans two folds.
        prompt_clusters: (n,) prompt cluster id.
        origins: (n,) origin label ("persuade" / "other").
        n_folds: number of folds, at least 2.
        seed: shuffling seed.
        group_by: "duplicates" (stratify by score x cluster x origin) or "prompt" (hold out clusters).
    """
    scores, duplicate_groups = np.asarray(scores), np.asarray(duplicate_groups)
    prompt_clusters, origins = np.asarray(prompt_clusters), np.asarray(origins)
    n = len(scores)
    if not len(duplicate_groups) == len(prompt_clusters) == len(origins) == n:
        raise ValueError("scores, duplicate_groups, prompt_clusters and origins must have the same length")
    if n_folds < 2:
        raise ValueError(f"prepare.n_folds must be at least 2, got {n_folds}")

    if group_by == "prompt":
        n_groups = len(np.unique(prompt_clusters))
        if n_groups < n_folds:
            raise ValueError(
                f"prepare.group_by=prompt needs at least n_folds={n_folds} prompt clusters, found {n_groups}; "
                f"lower prepare.n_folds to {n_groups} or less, or set prepare.n_clusters"
            )
        return _split(scores.astype(str), prompt_clusters, n_folds, seed)
    if group_by != "duplicates":
        raise ValueError(f"prepare.group_by must be 'duplicates' or 'prompt', got {group_by!r}")
    n_groups = len(np.unique(duplicate_groups))
    if n_groups < n_folds:
        raise ValueError(f"only {n_groups} distinct essays (after grouping duplicates) for {n_folds} folds; lower "
                         "prepare.n_folds")

    # Two stratification labels (score x origin, and score x cluster x origin) and a few shuffles each;
    # keep the split whose worst share gap is smallest, score gaps counting double. On small data the
    # three-way label alone balances clusters at the expense of scores; this choice keeps both close.
    score_origin = pd.Series(scores.astype(str)) + "|" + origins.astype(str)
    labels = {
        "score_origin": score_origin.to_numpy(),
        "score_cluster_origin": (score_origin + "|" + pd.Series(prompt_clusters.astype(str))).to_numpy(),
    }
    best, best_cost = None, np.inf
    for attempt in range(_ATTEMPTS):
        for label in labels.values():
            folds = _split(label, duplicate_groups, n_folds, seed * _ATTEMPTS + attempt)
            cost = max(
                2 * _max_share_gap(folds, scores),
                _max_share_gap(folds, prompt_clusters),
                _max_share_gap(folds, origins),
            )
            if cost < best_cost:
                best, best_cost = folds, cost
    assert best is not None
    return best


_ATTEMPTS = 3


def _split(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Rare label combinations have fewer members than folds: expected, harmless.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[held_out] = k
    return folds


def _max_share_gap(folds: np.ndarray, values: np.ndarray) -> float:
    """Largest |share of a value within a fold - its overall share| over folds and values."""
    per_fold = pd.crosstab(folds, values, normalize="index")
    overall = pd.Series(values).value_counts(normalize=True)
    return float((per_fold - overall).abs().max().max())


def fold_summary(folds: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict:
    """Fold sizes, the largest gap between a fold's score share and the overall share, split groups."""
    frame = pd.DataFrame({"fold": folds, "score": scores, "group": groups})
    max_dev = _max_share_gap(folds, scores)
    split_groups = int((frame.groupby("group")["fold"].nunique() > 1).sum())
    return {
        "n_folds": int(frame["fold"].nunique()),
        "sizes": frame["fold"].value_counts().sort_index().astype(int).tolist(),
        "score_share_max_deviation": round(max_dev, 4),
        "duplicate_groups_split": split_groups,
    }


def folds_fingerprint(folds: pd.DataFrame) -> str:
    """Hash of a folds table's essay ids, scores, folds and origins: which essay is held out where.

    A trained fold records it, so a model trained on another folds table (00_prepare re-run with other
    data or settings) is recognised as such.
    """
    columns = folds[["essay_id", "score", "fold", "origin"]].astype(str)
    return hashlib.sha256(columns.to_csv(index=False).encode()).hexdigest()[:16]
