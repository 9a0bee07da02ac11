"""Blenders compared on correlated synthetic OOF predictions: nested QWK and the in-sample optimism gap.

Each seed draws 10,000 essays (real score mix), 5 folds, and eight "models" that share the essay's
latent quality and make correlated errors, the way an ensemble of fine-tuned transformers does:
three seeds of a strong model (one noise component shared by the family), two seeds of a weaker one,
a feature-based model with independent errors, and two bad ones (a diverged run that is mostly noise
and a collapsed one that barely moves off the mean). For every blender a nested `Chain` (blend -> thresholds)
fits the weights and the thresholds on four folds and scores the fifth (never its labels), and the in-sample QWK
(both fitted on every row) is reported beside it. Target: greedy nested >= mean nested.

    .venv/bin/python benchmarks/blend_bench.py [--rows 10000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from common.ensemble.blenders import GreedyBlender, MeanBlender, ScipyBlender
from common.scoring.metrics import qwk
from common.scoring.nested import Chain, nested_qwk
from common.scoring.thresholds import ThresholdSearcher

SCORE_MIX = [0.07, 0.27, 0.36, 0.23, 0.06, 0.01]
MODELS = ["large_s0", "large_s1", "large_s2", "base_s0", "base_s1", "lgbm_feats", "diverged", "collapsed"]

BLENDERS: dict[str, Callable[[], Any]] = {
    "mean": MeanBlender,
    "greedy": GreedyBlender,
    "greedy_rounded": lambda: GreedyBlender(metric="rounded"),
    "scipy_mse": ScipyBlender,
    "scipy_qwk": lambda: ScipyBlender(loss="qwk"),
}


def make_models(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OOF matrix (n, 8), scores (n,), folds (n,)."""
    y = rng.choice(np.arange(1, 7), size=n, p=SCORE_MIX)
    quality = y + rng.normal(0.0, 0.35, size=n)

    def model(shrink: float, shared: np.ndarray, noise: float) -> np.ndarray:
        return 3.0 + shrink * (quality - 3.0) + shared + rng.normal(0.0, noise, size=n)

    large_family = rng.normal(0.0, 0.30, size=n)
    base_family = rng.normal(0.0, 0.40, size=n)
    columns = [
        model(0.85, large_family, 0.25),
        model(0.85, large_family, 0.25),
        model(0.85, large_family, 0.25),
        model(0.75, base_family, 0.35),
        model(0.75, base_family, 0.35),
        model(0.70, rng.normal(0.0, 0.45, size=n), 0.20),
        model(0.30, np.zeros(n), 1.20),
        model(0.05, np.zeros(n), 0.25),
    ]
    folds = rng.permutation(np.arange(n) % 5)
    return np.column_stack(columns), y, folds


def blend_figures(P: np.ndarray, y: np.ndarray, folds: np.ndarray, factory: Callable[[], Any]) -> dict[str, Any]:
    """Nested and in-sample QWK of blend -> thresholds, and the weights fitted on every row."""
    chain = Chain(P, y, folds, ThresholdSearcher, combiner=lambda train: factory())
    nested = nested_qwk(y, folds, chain.nested())["qwk_nested"]
    every = np.ones(len(y), dtype=bool)
    fitted = chain.fit(every)
    insample = qwk(y, chain.score(fitted, fitted.train_pred, every))
    return {"nested": nested, "insample": insample, "gap": insample - nested, "weights": fitted.combiner.weights_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000, help="rows (essays)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. seeds-1)")
    args = parser.parse_args()

    rows = []
    for seed in range(args.seeds):
        P, y, folds = make_models(np.random.default_rng(seed), args.rows)
        singles = [nested_qwk(y, folds, Chain(P[:, j], y, folds, ThresholdSearcher).nested())["qwk_nested"]
                   for j in range(P.shape[1])]
        print(f"seed {seed}: single-model nested QWK " +
              ", ".join(f"{name} {score:.4f}" for name, score in zip(MODELS, singles, strict=True)))
        for name, factory in BLENDERS.items():
            start = time.perf_counter()
            result = blend_figures(P, y, folds, factory)
            rows.append({
                "seed": seed,
                "blender": name,
                "nested": result["nested"],
                "insample": result["insample"],
                "gap": result["gap"],
                "seconds": time.perf_counter() - start,
                "weights": " ".join(f"{w:.2f}" for w in result["weights"]),
            })
        rows.append({"seed": seed, "blender": "best_single", "nested": max(singles)})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    pd.set_option("display.float_format", "{:.4f}".format)
    print(f"\n{args.rows} rows, 5 folds; weights fitted on all rows, in model order {MODELS}")
    print(table.to_string(index=False))
    mean = table.groupby("blender", sort=False)[["nested", "insample", "gap", "seconds"]].mean()
    print("\nmean over seeds:")
    print(mean.to_string())
    wide = table.pivot(index="seed", columns="blender", values="nested")
    diff = wide["greedy"] - wide["mean"]
    print(f"\ngreedy nested - mean nested, per seed: {diff.round(4).tolist()} "
          f"(greedy >= mean on every seed: {bool((diff >= 0).all())})")


if __name__ == "__main__":
    main()
