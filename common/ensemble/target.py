"""Which rows 04_ensemble fits and selects for, and the weight of each row: `Target` (`ensemble.target`), the rows
of a fit (`Rows`), the QWK of weighted rows, and the prompt-mix weights (`ensemble.prompt_mix`).

The hidden test resembles the other-origin essays, so a target weight w > 1 weighs them more in every fit (and
`other` fits and selects on them alone); per-origin and per-prompt thresholds are also the target's to say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from common.scoring.metrics import qwk
from common.scoring.uncertainty import DEFAULT_DRAWS, DEFAULT_LEVEL

OTHER_ONLY = math.inf
"""The target weight of `ensemble.target: other`: other-origin rows only (corpus rows weigh 0)."""


def weight_label(weight: float) -> str:
    """How a target weight of other-origin rows is written in tables: '1', '4', 'other only'."""
    return "other only" if math.isinf(weight) else f"{weight:g}"


@dataclass
class Target:
    """Which rows the ensemble is fitted and selected for (`ensemble.target`).

    `mode`: "all" (every row weighs 1, selection on all rows), "other" (other-origin rows only), a number w
    (other-origin rows weigh w, corpus rows 1, selection on that weighting), or "auto": w is chosen from
    `weights` by nested CV inside the training folds to maximise QWK on other-origin rows, the rows the hidden
    test resembles; corpus rows stay in every fit. `by_origin`: each origin gets its own cut points and the
    stacker sees the origin (column `origin__other`); test essays get the other-origin ones. `by_prompt`: cut
    points per prompt cluster too (within the origin), fitted nested like the rest; a cluster with too few rows
    falls back to its origin's cut points, and test essays get their cluster's by the prompt assigner.
    """

    mode: str | float = "auto"
    weights: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    by_origin: bool = True
    by_prompt: bool = False
    rule: str = "best"  # how a weight is chosen among the candidates: SELECTIONS (`pick_weight`)
    n_draws: int = DEFAULT_DRAWS  # bootstrap of the noise-aware rule
    level: float = DEFAULT_LEVEL
    seed: int = 0

    @property
    def candidates(self) -> tuple[float, ...]:
        if self.mode == "auto":
            return tuple(float(w) for w in self.weights)
        if self.mode == "all":
            return (1.0,)
        if self.mode == "other":
            return (OTHER_ONLY,)
        return (float(self.mode),)

    @property
    def select_on(self) -> str:
        """Rows whose QWK picks the weight and the method: 'other', 'all' or 'weighted'."""
        if self.mode in ("auto", "other"):
            return "other"
        return "all" if self.mode == "all" else "weighted"

    def fit_weights(self, weight: float, other: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Row weights of a fit at target weight `weight` of other-origin rows (times the prompt-mix weights)."""
        if math.isinf(weight):
            return base * other
        return base * np.where(other, weight, 1.0)

    def select_weights(self, other: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Row weights of the QWK that picks the weight and the method (zero: not scored)."""
        if self.select_on == "other":
            return base * other
        if self.select_on == "all":
            return base
        return self.fit_weights(float(self.mode), other, base)


@dataclass
class Rows:
    """The rows of one ensemble fit: labels, folds, origins and the prompt-mix weights (ones when none)."""

    y: np.ndarray
    folds: np.ndarray
    other: np.ndarray
    base: np.ndarray
    prompt: np.ndarray | None = None  # prompt clusters, as the prompt assigner gives them (per-prompt thresholds)

    @property
    def origin(self) -> np.ndarray:
        return np.where(self.other, "other", "persuade")

    def groups(self, target: Target) -> np.ndarray | None:
        """The thresholds' groups: origin, prompt cluster, or "origin|cluster" (`GroupThresholds`), or None."""
        if target.by_prompt and self.prompt is not None:
            prompt = np.asarray(self.prompt).astype(str)
            return np.char.add(np.char.add(self.origin, "|"), prompt) if target.by_origin else prompt
        return self.origin if target.by_origin else None


def qwk_on(rows: Rows, scores: np.ndarray, weights: np.ndarray) -> float | None:
    """QWK of `scores` (1..6) against the labels on the rows of positive `weights`, weighted by them; None when
    those rows hold fewer than two distinct labels."""
    keep = weights > 0
    if not keep.any() or np.unique(rows.y[keep]).size < 2:
        return None
    return qwk(rows.y[keep], scores[keep], sample_weight=weights[keep])


def prompt_mix_weights(clusters: ArrayLike, target_mix: Mapping[str, float]) -> np.ndarray:
    """Row weights, shape (n,), that make the weighted share of each cluster equal `target_mix`.

    Clusters are matched by `str(cluster)`; the mix is normalised to sum to one; a cluster absent from
    `target_mix` gets weight 0. Weights sum to n, so unweighted and weighted totals are comparable.
    """
    c = np.asarray(clusters).astype(str)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"clusters must be a non-empty 1-D array, got shape {c.shape}")
    shares = {str(k): float(v) for k, v in target_mix.items()}
    if any(not np.isfinite(v) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"target_mix must hold non-negative shares with a positive sum, got {shares}")
    present, counts = np.unique(c, return_counts=True)
    count_of = dict(zip(present.tolist(), counts.tolist(), strict=True))
    missing = sorted(k for k, v in shares.items() if v > 0 and k not in count_of)
    if missing:
        raise ValueError(f"target_mix names clusters with no rows: {missing}; present clusters: {present.tolist()}")
    total_share = sum(shares.values())
    per_row = {k: shares.get(k, 0.0) / total_share * c.size / n for k, n in count_of.items()}
    return np.array([per_row[k] for k in c], dtype=np.float64)
