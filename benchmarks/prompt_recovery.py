"""Benchmark of prompt recovery (`common.prepare.clusters.recover_prompts`) on the ASAP essays, sets 1-6.

Runs (a) the baseline, plain TF-IDF + KMeans told the true number of prompts; (b) `recover_prompts`
choosing the number itself; (c) the same with one prompt downsampled to a third, once per prompt;
and (d) a timing at competition scale: essays of about 400 words made by joining two ASAP essays of
the same prompt, up to 28,000 of them. Prints ARI against prompt_id, the number of clusters and the
seconds of each run. Skips cleanly (exit 0) when the ASAP file is absent.

    .venv/bin/python benchmarks/prompt_recovery.py [--data PATH] [--seed 42] [--scale-essays 28000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from common.prepare.clusters import recover_prompts

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "asap_sets_1-6.csv.gz"
DOWNSAMPLED_SHARE = 1 / 3


def baseline_labels(texts: list[str], n_clusters: int, seed: int) -> np.ndarray:
    """Plain TF-IDF (scikit-learn defaults) + KMeans with 10 inits, told the number of prompts."""
    with threadpool_limits(limits=1):
        tfidf = TfidfVectorizer().fit_transform(texts)
        return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(tfidf)


def downsample_prompt(essays: pd.DataFrame, prompt: int, share: float, seed: int) -> pd.DataFrame:
    """Essays with prompt `prompt` cut to `share` of its essays, the others kept."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(essays["prompt_id"].to_numpy() == prompt)
    dropped = rng.choice(rows, len(rows) - round(len(rows) * share), replace=False)
    return essays.drop(essays.index[dropped])


def joined_essays(essays: pd.DataFrame, n_essays: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n_essays texts, each two random essays of one random prompt joined (about 400 words)."""
    rng = np.random.default_rng(seed)
    texts = essays["full_text"].to_numpy()
    by_prompt = {
        prompt: np.flatnonzero(essays["prompt_id"].to_numpy() == prompt)
        for prompt in sorted(essays["prompt_id"].unique())
    }
    prompts = rng.choice(list(by_prompt), n_essays)
    joined = []
    for prompt in prompts:
        first, second = rng.choice(by_prompt[prompt], 2, replace=False)
        joined.append(f"{texts[first]}\n\n{texts[second]}")
    return joined, prompts


def timed_recovery(texts: list[str], seed: int) -> tuple[np.ndarray, int, float]:
    start = time.perf_counter()
    result = recover_prompts(texts, seed=seed)
    return result.labels, result.n_clusters, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ASAP sets 1-6 CSV (gzip).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of every random step.")
    parser.add_argument(
        "--scale-essays", type=int, default=28_000, help="Essays in the competition-scale timing."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data = args.data if args.data.is_absolute() else REPO_ROOT / args.data
    if not data.exists():
        print(f"skipped: ASAP file {data} is absent (pass its path with --data).")
        return 0
    essays = pd.read_csv(data, usecols=["prompt_id", "full_text"])
    truth = essays["prompt_id"].to_numpy()
    texts = essays["full_text"].tolist()
    n_prompts = essays["prompt_id"].nunique()
    print(f"{len(essays)} essays, {n_prompts} prompts, seed {args.seed}")
    print(f"{'run':<44} {'k':>3} {'ARI':>7} {'seconds':>8}")

    start = time.perf_counter()
    labels = baseline_labels(texts, n_prompts, args.seed)
    base_seconds = time.perf_counter() - start
    base_ari = adjusted_rand_score(truth, labels)
    print(
        f"{'(a) baseline TF-IDF + KMeans, told k':<44} {n_prompts:>3} {base_ari:>7.4f} {base_seconds:>8.1f}"
    )

    labels, k, seconds = timed_recovery(texts, args.seed)
    score = adjusted_rand_score(truth, labels)
    print(f"{'(b) recover_prompts, k chosen':<44} {k:>3} {score:>7.4f} {seconds:>8.1f}")
    print(f"    vs baseline: ARI x{score / base_ari:.4f}, time x{seconds / base_seconds:.2f}")

    unbalanced_scores = []
    for prompt in sorted(essays["prompt_id"].unique()):
        subset = downsample_prompt(essays, prompt, DOWNSAMPLED_SHARE, args.seed)
        labels, k, seconds = timed_recovery(subset["full_text"].tolist(), args.seed)
        score = adjusted_rand_score(subset["prompt_id"], labels)
        unbalanced_scores.append(score)
        name = f"(c) prompt {prompt} cut to a third ({len(subset)} essays)"
        print(f"{name:<44} {k:>3} {score:>7.4f} {seconds:>8.1f}")
    print(
        f"    unbalanced: lowest ARI {min(unbalanced_scores):.4f}, vs baseline x{min(unbalanced_scores) / base_ari:.4f}"
    )

    scaled, scaled_truth = joined_essays(essays, args.scale_essays, args.seed)
    words = np.mean([len(text.split()) for text in scaled])
    labels, k, seconds = timed_recovery(scaled, args.seed)
    score = adjusted_rand_score(scaled_truth, labels)
    name = f"(d) {len(scaled)} joined essays, {words:.0f} words"
    print(f"{name:<44} {k:>3} {score:>7.4f} {seconds:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
