"""ThresholdSearcher against the common Nelder-Mead "OptimizedRounder", at the competition's size.

Each seed draws 17,000 scores with the real train mix (1: 7%, 2: 27%, 3: 36%, 4: 23%, 5: 6%, 6: 1%) and
continuous predictions the way a regression model makes them (shrunk towards the mean, a per-prompt
offset, noise growing with the score), plus an independent second sample from the same process to
check the fitted thresholds out of sample. It fits thresholds with

- ours: `ThresholdSearcher()` (exact coordinate search + Nelder-Mead polish);
- optimized_rounder: the snippet found in most public notebooks, `scipy.optimize.minimize(
  method="nelder-mead")` from [1.5, 2.5, 3.5, 4.5, 5.5] on -QWK, thresholds applied with `pd.cut` and
  QWK from `sklearn.metrics.cohen_kappa_score(weights="quadratic")`;
- nm_fast_qwk: the same Nelder-Mead search but scoring with our vectorised `qwk`, to separate the
  gain of the search from the gain of the faster metric;

and prints QWK (in sample and on the second sample) and wall time of each, with speed ratios measured
in the same run. Targets: ours >= optimized_rounder in QWK and >= 10x faster.

    .venv/bin/python benchmarks/thresholds_bench.py [--rows 17000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.metrics import cohen_kappa_score

from common.scoring.metrics import qwk
from common.scoring.thresholds import ThresholdSearcher, apply_thresholds

SCORE_MIX = [0.07, 0.27, 0.36, 0.23, 0.06, 0.01]
START = [1.5, 2.5, 3.5, 4.5, 5.5]


def make_sample(rng: np.random.Generator, n: int, prompt_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores with the real mix and noisy, shrunk continuous predictions (QWK about 0.8 when rounded)."""
    y = rng.choice(np.arange(1, 7), size=n, p=SCORE_MIX)
    prompt = rng.integers(0, prompt_offsets.size, size=n)
    latent = y + rng.normal(0.0, 0.45, size=n)
    preds = 3.0 + 0.8 * (latent - 3.0) + prompt_offsets[prompt] + rng.normal(0.0, 0.15 + 0.05 * y, size=n)
    return preds, y


def optimized_rounder(preds: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The public-notebook OptimizedRounder: Nelder-Mead on pd.cut + cohen_kappa_score."""

    def loss(coef: np.ndarray) -> float:
        scores = pd.cut(preds, [-np.inf, *np.sort(coef), np.inf], labels=[1, 2, 3, 4, 5, 6])
        return -cohen_kappa_score(y, scores.astype(int), weights="quadratic")

    return np.sort(minimize(loss, START, method="nelder-mead").x)


def nelder_mead_fast_qwk(preds: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The same Nelder-Mead search scored with the vectorised qwk."""
    result = minimize(lambda t: -qwk(y, apply_thresholds(preds, np.sort(t))), START, method="nelder-mead")
    return np.sort(result.x)


def ours(preds: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ThresholdSearcher().fit(preds, y).thresholds_


METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ours": ours,
    "optimized_rounder": optimized_rounder,
    "nm_fast_qwk": nelder_mead_fast_qwk,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=17000, help="rows per sample")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. seeds-1)")
    args = parser.parse_args()

    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        offsets = rng.normal(0.0, 0.12, size=7)
        preds, y = make_sample(rng, args.rows, offsets)
        preds_out, y_out = make_sample(rng, args.rows, offsets)
        rounded = qwk(y, np.clip(np.rint(preds), 1, 6).astype(int))
        for name, method in METHODS.items():
            start = time.perf_counter()
            thresholds = method(preds, y)
            seconds = time.perf_counter() - start
            rows.append({
                "seed": seed,
                "method": name,
                "qwk_in": qwk(y, apply_thresholds(preds, thresholds)),
                "qwk_out": qwk(y_out, apply_thresholds(preds_out, thresholds)),
                "seconds": seconds,
                "qwk_rounded": rounded,
            })
    table = pd.DataFrame(rows)
    wide = table.pivot(index="seed", columns="method", values=["qwk_in", "qwk_out", "seconds"])
    pd.set_option("display.width", 160)
    pd.set_option("display.float_format", "{:.5f}".format)
    print(f"{args.rows} rows per sample, seeds 0..{args.seeds - 1}; rounded in-sample QWK "
          f"{table.groupby('seed')['qwk_rounded'].first().round(4).tolist()}")
    print(wide.to_string())
    mean = table.groupby("method")[["qwk_in", "qwk_out", "seconds"]].mean()
    print("\nmean over seeds:")
    print(mean.to_string())
    t = wide["seconds"]
    print("\nspeed ratio (their time / ours), per seed:")
    print(f"  optimized_rounder / ours: {(t['optimized_rounder'] / t['ours']).round(1).tolist()}")
    print(f"  nm_fast_qwk / ours:       {(t['nm_fast_qwk'] / t['ours']).round(1).tolist()}")
    gain = wide["qwk_in"]["ours"] - wide["qwk_in"]["optimized_rounder"]
    print(f"in-sample QWK ours - optimized_rounder, per seed: {gain.round(5).tolist()} "
          f"(never below 0: {bool((gain >= -1e-12).all())})")
    print(f"held-out  QWK ours - optimized_rounder, per seed: "
          f"{(wide['qwk_out']['ours'] - wide['qwk_out']['optimized_rounder']).round(5).tolist()}")


if __name__ == "__main__":
    main()
