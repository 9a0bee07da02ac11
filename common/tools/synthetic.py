"""Synthetic OOF predictions of the competition's shape, for tests and benchmarks of the ensemble.

`origin_shift_oofs` mimics what strong AES2 ensembles look like: corpus ("persuade") and other-origin essays
scored by the same raters' scale but predicted differently. Every model sees an essay's latent quality plus
an error shared by the family and its own error; on other-origin rows the models over-predict a little (the
corpus rows dominate their training) and err more. One model is much stronger on corpus rows than on the
others (as a model that saw corpus essays in pre-training or pseudo-labels is): a fit on all rows piles
weight on it and loses on the rows the hidden test resembles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.scoring.oof import OOFSet

PROMPTS = ("Car-free cities", "Does the electoral college work?", "Exploring Venus", "The Face on Mars",
           "Facial action coding system", "A Cowboy Who Rode the Waves", "Driverless cars")
OTHER_PROMPTS = PROMPTS[2:]  # other-origin essays answer five of the seven prompts


def _scores(latent: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(cuts, latent)


def origin_shift_oofs(n: int = 17307, n_other: int = 4436, n_folds: int = 5, seed: int = 0,
                      corpus_model_noise: tuple[float, float] = (0.12, 1.1)) -> OOFSet:
    """OOF predictions of seven models, one of them strong on corpus rows and weak on other-origin rows.

    Args:
        n, n_other: rows, and other-origin rows among them.
        n_folds: folds (rows assigned at random, balanced).
        seed: seeds everything.
        corpus_model_noise: the special model's error on (corpus rows, other-origin rows).
    """
    rng = np.random.default_rng(seed)
    other = np.zeros(n, dtype=bool)
    other[rng.choice(n, n_other, replace=False)] = True
    quality = rng.normal(0.0, 1.0, n) - 0.3 * other
    rater = rng.normal(0.0, 0.35, n)
    y = _scores(quality + rater, np.array([-1.5, -0.55, 0.35, 1.25, 2.1]))
    prompt = np.where(other, rng.choice(OTHER_PROMPTS, n), rng.choice(PROMPTS, n))
    # The models predict on the score scale: 3.2 + 1.05 * quality, a shared family error, their own error.
    signal = 3.2 + 1.05 * quality
    family = rng.normal(0.0, 0.4, n)
    preds = {}
    noises = ((0.25, 0.3), (0.27, 0.35), (0.3, 0.45), (0.32, 0.5), (0.35, 0.55), (0.4, 0.6))
    for k, (corpus_noise, other_noise) in enumerate(noises):
        bias = np.where(other, 0.1 + 0.04 * k, 0.0)
        own = rng.normal(0.0, 1.0, n) * np.where(other, other_noise, corpus_noise)
        preds[f"deberta-{k}"] = signal + family + bias + own
    corpus_noise, other_noise = corpus_model_noise
    preds["corpus-strong"] = (signal + np.where(other, family + 0.4, 0.1 * family)
                              + rng.normal(0.0, 1.0, n) * np.where(other, other_noise, corpus_noise))
    folds = pd.DataFrame({
        "essay_id": [f"s{i:05d}" for i in range(n)],
        "score": y,
        "fold": rng.permutation(np.arange(n) % n_folds),
        "prompt_cluster": pd.Series(prompt).map({p: i for i, p in enumerate(PROMPTS)}).to_numpy(),
        "prompt_name": prompt,
        "origin": np.where(other, "other", "persuade"),
    })
    return OOFSet(folds=folds, preds=preds, probs={})
