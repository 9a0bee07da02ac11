"""Stage 00_prepare's logic: origin matching, prompt-cluster recovery and folds from validated inputs.

`prepare` takes the validated competition data and returns the frames and metrics the stage writes:
`folds` (the design's folds.parquet contract plus `duplicate_group`), `external` (corpus essays not in
train, deduplicated), `test_prompts` (recovered prompt cluster of each test essay) and `metrics`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.config.params import PrepareParams
from common.core.errors import PipelineError
from common.prepare.clusters import name_clusters, recover_prompts
from common.prepare.data import CompetitionData
from common.prepare.duplicates import connected_groups, duplicate_pairs, match_origin
from common.prepare.folds import fold_summary, make_folds

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    folds: pd.DataFrame
    external: pd.DataFrame
    test_prompts: pd.DataFrame
    metrics: dict


def prepare(data: CompetitionData, params: PrepareParams, seed: int) -> PrepareResult:
    """Origin, duplicate groups, prompt clusters and folds for the train essays."""
    timings: dict[str, float] = {}
    train, test, corpus = data.train, data.test, data.corpus
    n_train = len(train)
    check_data_limits(train, len(test), params)

    start = time.perf_counter()
    origin, groups, corpus_prompt, external, origin_metrics = _origins(train, corpus, params.near_duplicate_threshold)
    timings["origin_and_duplicates"] = time.perf_counter() - start

    start = time.perf_counter()
    texts = [*train["full_text"].tolist(), *test["full_text"].tolist()]
    clusters = recover_prompts(
        texts, n_clusters=params.n_clusters, max_clusters=params.max_clusters, seed=seed
    )
    names, quality = name_clusters(clusters.labels[:n_train], list(corpus_prompt))
    train_clusters, test_clusters = clusters.labels[:n_train], clusters.labels[n_train:]
    cluster_name = np.array([names[c] for c in train_clusters], dtype=object)
    prompt_name = np.where(pd.notna(corpus_prompt), corpus_prompt, cluster_name)
    timings["prompt_clusters"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = train["score"].to_numpy()
    try:
        folds = make_folds(
            scores, groups, train_clusters, origin, n_folds=params.n_folds, seed=seed, group_by=params.group_by
        )
    except ValueError as exc:  # too few essays or prompt clusters for the folds asked for
        raise PipelineError(f"{params.train_file}: {exc}") from None
    timings["folds"] = time.perf_counter() - start

    folds_frame = pd.DataFrame(
        {
            "essay_id": train["essay_id"].to_numpy(),
            "score": scores.astype(np.int64),
            "fold": folds,
            "prompt_cluster": train_clusters.astype(np.int64),
            "prompt_name": prompt_name.astype(str),
            "origin": origin.astype(str),
            "duplicate_group": groups.astype(np.int64),
        }
    )
    test_prompts = pd.DataFrame(
        {
            "essay_id": test["essay_id"].to_numpy(),
            "prompt_cluster": test_clusters.astype(np.int64),
            "prompt_name": [names[c] for c in test_clusters],
        }
    )
    sizes = pd.Series(cluster_name).value_counts()
    metrics = {
        "n_train": n_train,
        "n_test": len(test),
        "n_corpus": 0 if corpus is None else len(corpus),
        "n_external": len(external),
        "origin": origin_metrics,
        "clusters": {
            "n_clusters": clusters.n_clusters,
            "chosen_automatically": params.n_clusters == 0,
            "purity": _finite_or_none(quality.get("purity")),
            "ari": _finite_or_none(quality.get("ari")),
            "n_known_prompt": int(quality.get("n_known", 0)),
            "train_sizes": {str(k): int(v) for k, v in sizes.items()},
        },
        "folds": fold_summary(folds, scores, groups),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    log.info(
        "prompt clusters: %d (purity %s, ARI %s on %s essays with a known prompt)",
        clusters.n_clusters, quality.get("purity"), quality.get("ari"), quality.get("n_known"),
    )
    return PrepareResult(folds=folds_frame, external=external, test_prompts=test_prompts, metrics=metrics)


def _origins(train: pd.DataFrame, corpus: pd.DataFrame | None, threshold: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame, dict]:
    """Per train essay its origin and duplicate group, and its prompt where the corpus names it; the corpus
    rows kept as external essays (no copy of a train essay); the counts."""
    n_train = len(train)
    if corpus is None:
        log.info("no external corpus configured: every train essay is of 'other' origin")
        pairs = duplicate_pairs(train["full_text"].tolist(), threshold=threshold)
        external = pd.DataFrame(columns=["essay_id", "full_text", "score", "prompt_name"])
        return (np.full(n_train, "other", dtype=object), connected_groups(n_train, pairs),
                np.full(n_train, None, dtype=object), external,
                {"persuade": 0, "other": n_train, "exact_matches": 0, "near_matches": 0})
    match = match_origin(train["full_text"].tolist(), corpus["full_text"].tolist(), threshold=threshold)
    origin = match.origin
    corpus_prompt = np.where(
        match.corpus_index >= 0, corpus["prompt_name"].to_numpy()[np.maximum(match.corpus_index, 0)], None
    )
    counts = {"persuade": int((origin == "persuade").sum()), "other": int((origin == "other").sum()),
              "exact_matches": match.n_exact, "near_matches": match.n_near}
    return origin, match.train_groups, corpus_prompt, corpus.loc[match.corpus_keep].reset_index(drop=True), counts


def check_data_limits(train: pd.DataFrame, n_test: int, params: PrepareParams) -> None:
    """Limits the params must respect on this data, checked before the matching and clustering."""
    problems = []
    counts = train["score"].value_counts()
    if params.n_folds > len(train):
        problems.append(f"prepare.n_folds={params.n_folds} folds for {len(train)} train essays: every fold needs "
                        f"held-out essays; use prepare.n_folds <= {len(train)}")
    elif counts.max() < params.n_folds:
        fix = (f"use prepare.n_folds <= {counts.max()}" if counts.max() >= 2 else
               "use a train file with more essays")
        problems.append(f"no score has {params.n_folds} essays (the most common, {counts.idxmax()}, has "
                        f"{counts.max()}), so no fold split keeps the score mix; {fix}")
    if params.n_clusters > len(train) + n_test:
        problems.append(f"prepare.n_clusters={params.n_clusters} prompt clusters for {len(train) + n_test} essays; "
                        "use fewer (0 chooses from the data)")
    if problems:
        raise PipelineError(f"{params.train_file} ({len(train)} essays, scores {counts.sort_index().to_dict()}) "
                            "does not fit the params: " + "; ".join(problems))


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: figures that cannot be computed (no essay with a known prompt) become null."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)
