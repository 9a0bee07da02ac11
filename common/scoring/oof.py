"""Out-of-fold predictions: finding every model's `oof.parquet`, checking it, and lining it up with the folds.

A model's OOF file (`output/train/<model>/oof.parquet`) holds `essay_id, fold, pred` and, for heads
with class probabilities, `prob_1 .. prob_6`. `load_oof_predictions` checks each file against
`folds.parquet` (same essays, same folds, every fold present, no NaN) and returns them in the order
of the folds table, so rows of every model and of the labels line up. `threshold_report` is what 03_oof_thresholds
reports per model: thresholds fitted on all rows, and the nested figures of `common.scoring.nested.Chain`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from common.core.errors import InputError
from common.scoring.metrics import check_sample_weight, qwk, qwk_by_group
from common.scoring.nested import Chain, nested_qwk
from common.scoring.thresholds import SearcherFactory, ThresholdSearcher, round_scores
from common.scoring.uncertainty import bootstrap_qwk

logger = logging.getLogger(__name__)

OOF_FILE = "oof.parquet"
OOF_COLUMNS = ("essay_id", "fold", "pred")
FOLDS_COLUMNS = ("essay_id", "score", "fold", "prompt_cluster", "prompt_name", "origin")
_OOF = "the OOF predictions"
"""What `InputError`'s header ("N problem(s) in ...:") names for problems with the models' OOF files."""


def threshold_report(
    preds: ArrayLike,
    y: ArrayLike,
    folds: ArrayLike,
    groups: Mapping[str, ArrayLike] | None = None,
    sample_weight: ArrayLike | None = None,
    searcher_factory: SearcherFactory = ThresholdSearcher,
) -> dict[str, Any]:
    """Everything a stage reports about thresholding one model's OOF predictions, JSON-serialisable.

    Args:
        preds: continuous OOF predictions, shape (n,).
        y: true scores 1..6, shape (n,).
        folds: fold id per row, shape (n,).
        groups: named groupings, each shape (n,), e.g. `{"prompt_cluster": ..., "origin": ...}`.
        sample_weight: optional row weights, shape (n,).

    Returns:
        `thresholds` (fitted on all rows), `qwk_rounded` (clip(rint)), `qwk_insample` (thresholds fitted
        and scored on all rows, optimistic), `qwk_nested` (thresholds from the other folds),
        `per_fold` (nested QWK per fold), `thresholds_per_fold`, and `per_group`: for each named grouping
        the nested-thresholded QWK per group (None where a group has fewer than two true scores).
    """
    chain = Chain(preds, y, folds, searcher_factory)
    p, labels = chain.X, chain.y
    w = check_sample_weight(sample_weight, len(p))
    nested = chain.nested(w)
    searcher = searcher_factory().fit(p, labels, sample_weight=w)
    per_group: dict[str, dict[str, float | None]] = {}
    for name, values in (groups or {}).items():
        g = np.asarray(values)
        if g.shape != (len(p),):
            raise ValueError(f"grouping {name!r} must have shape ({len(p)},), got {g.shape}")
        per_group[name] = qwk_by_group(labels, nested.scores, g, sample_weight=w)
    figures = nested_qwk(labels, chain.folds, nested, w)
    report = {
        "thresholds": [float(t) for t in searcher.thresholds_],
        "qwk_rounded": qwk(labels, round_scores(p), sample_weight=w),
        "qwk_insample": qwk(labels, searcher.predict(p), sample_weight=w),
        "qwk_nested": figures["qwk_nested"],
        "per_fold": figures["per_fold"],
        "thresholds_per_fold": figures["thresholds_per_fold"],
        "per_group": per_group,
    }
    logger.info("QWK rounded %.4f, thresholded in-sample %.4f, nested %.4f",
                report["qwk_rounded"], report["qwk_insample"], report["qwk_nested"])
    return report


@dataclass
class OOFSet:
    """Labels and folds of the train essays plus every model's OOF predictions in the same row order."""

    folds: pd.DataFrame  # folds.parquet, one row per train essay
    preds: dict[str, np.ndarray]  # model -> (n,) continuous prediction on the 1-6 scale
    probs: dict[str, pd.DataFrame]  # model -> (n, 6) class probabilities (only heads that have them)

    @property
    def names(self) -> list[str]:
        return list(self.preds)

    @property
    def y(self) -> np.ndarray:
        return self.folds["score"].to_numpy()

    @property
    def fold(self) -> np.ndarray:
        return self.folds["fold"].to_numpy()

    @property
    def other(self) -> np.ndarray:
        """Boolean mask of other-origin rows (the ones the hidden test resembles)."""
        return (self.folds["origin"] == "other").to_numpy()

    def matrix(self) -> np.ndarray:
        """(n, n_models) predictions, columns in `names` order."""
        return np.column_stack([self.preds[name] for name in self.names])


def read_folds(path: Path) -> pd.DataFrame:
    """folds.parquet, checked for the contract's columns."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run 00_prepare first (python 00_prepare/run.py)")
    folds = pd.read_parquet(path)
    missing = [c for c in FOLDS_COLUMNS if c not in folds.columns]
    if missing:
        raise InputError([f"{path}: missing column(s) {missing}. Fix: re-run 00_prepare."], what="the folds table")
    return folds.reset_index(drop=True)


def discover_models(train_dir: Path, names: list[str]) -> list[str]:
    """The models to use: `names` if given (each must exist), else every folder with an OOF file."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(
            [f"model(s) {duplicated} listed twice in ensemble.models. Fix: list each model once."],
            what="the ensemble's model list",
        )
    if names:
        missing = [n for n in names if not (train_dir / n / OOF_FILE).exists()]
        if missing:
            found = sorted(p.parent.name for p in train_dir.glob(f"*/{OOF_FILE}"))
            raise InputError(
                [f"{train_dir}: no {OOF_FILE} for model(s) {missing} (models with OOF predictions: {found}). "
                 "Fix: train them with 02_train, or correct ensemble.models."],
                what=_OOF,
            )
        return list(names)
    found = sorted(p.parent.name for p in train_dir.glob(f"*/{OOF_FILE}"))
    if not found:
        raise FileNotFoundError(
            f"no model under {train_dir} has an {OOF_FILE}: run 02_train first (python 02_train/run.py)"
        )
    return found


def _check_oof(path: Path, oof: pd.DataFrame, folds: pd.DataFrame) -> list[str]:
    problems = []
    missing = [c for c in OOF_COLUMNS if c not in oof.columns]
    if missing:
        return [f"{path}: missing column(s) {missing}. Fix: OOF files need columns {list(OOF_COLUMNS)}."]
    if oof["essay_id"].duplicated().any():
        dup = oof.loc[oof["essay_id"].duplicated(), "essay_id"].head(5).tolist()
        problems.append(f"{path}: essay ids predicted twice: {dup}. Fix: one OOF row per essay.")
    n_folds = folds["fold"].nunique()
    covered = sorted(oof["fold"].unique().tolist())
    if len(covered) < n_folds:
        problems.append(
            f"{path}: covers fold(s) {covered} of {n_folds}. Fix: train every fold of this model "
            "(a model with missing folds has no OOF prediction for some essays)."
        )
    expected, got = set(folds["essay_id"]), set(oof["essay_id"])
    if expected != got:
        problems.append(
            f"{path}: essay ids differ from folds.parquet ({len(expected - got)} missing, e.g. "
            f"{sorted(expected - got)[:3]}; {len(got - expected)} unknown, e.g. {sorted(got - expected)[:3]}). "
            "Fix: re-run 02_train on the current folds."
        )
    nan = oof["pred"].isna() | ~np.isfinite(pd.to_numeric(oof["pred"], errors="coerce"))
    if nan.any():
        ids = oof.loc[nan, "essay_id"].head(5).tolist()
        problems.append(
            f"{path}: {int(nan.sum())} NaN or infinite prediction(s) (essay_id {ids}). "
            "Fix: check that model's training log for a diverged fold and retrain it."
        )
    if not problems:
        merged = folds[["essay_id", "fold"]].merge(oof[["essay_id", "fold"]], on="essay_id", suffixes=("", "_oof"))
        moved = merged["fold"] != merged["fold_oof"]
        if moved.any():
            problems.append(
                f"{path}: {int(moved.sum())} essay(s) predicted in a different fold than folds.parquet says "
                f"(e.g. {merged.loc[moved, 'essay_id'].head(3).tolist()}). Fix: re-run 02_train on the current folds."
            )
    return problems


def load_oof_predictions(train_dir: Path, folds_path: Path, names: list[str]) -> OOFSet:
    """Every chosen model's OOF predictions, checked and aligned to folds.parquet's row order."""
    folds = read_folds(folds_path)
    models = discover_models(train_dir, names)
    preds: dict[str, np.ndarray] = {}
    probs: dict[str, pd.DataFrame] = {}
    problems: list[str] = []
    for name in models:
        path = train_dir / name / OOF_FILE
        oof = pd.read_parquet(path)
        found = _check_oof(path, oof, folds)
        if found:
            problems.extend(found)
            continue
        aligned = folds[["essay_id"]].merge(oof, on="essay_id", how="left")
        preds[name] = aligned["pred"].to_numpy(np.float64)
        prob_cols = sorted(c for c in aligned.columns if c.startswith("prob_"))
        if prob_cols:
            probs[name] = aligned[prob_cols].astype(np.float64)
    if problems:
        raise InputError(problems, what=_OOF)
    return OOFSet(folds=folds, preds=preds, probs=probs)


def model_report(oofs: OOFSet, name: str, polish: bool = True, n_draws: int = 1000, level: float = 0.9,
                 seed: int = 0) -> dict:
    """Threshold report of one model: rounded / in-sample / nested QWK on all rows and on other-origin rows, and
    bootstrap intervals of the nested figures (`qwk_nested_low` / `_high`, `qwk_nested_other_low` / `_high`:
    essays resampled within folds, `level` two-sided).

    Per-fold, per-prompt and per-origin figures use the nested (held-out) thresholded scores.
    """
    pred, y, other = oofs.preds[name], oofs.y, oofs.other
    searcher = lambda: ThresholdSearcher(polish=polish)  # noqa: E731
    report = threshold_report(
        pred,
        y,
        oofs.fold,
        groups={"prompt_name": oofs.folds["prompt_name"].to_numpy(), "origin": oofs.folds["origin"].to_numpy()},
        searcher_factory=searcher,
    )
    report["model"] = name
    report["n_rows"] = len(y)
    report["n_other"] = int(other.sum())
    report["qwk_rounded_other"] = qwk(y[other], round_scores(pred[other])) if other.any() else None
    report["qwk_nested_other"] = report["per_group"]["origin"].get("other")
    nested_scores = Chain(pred, y, oofs.fold, searcher).nested().scores
    report["interval_level"] = level
    for key, rows in (("qwk_nested", None), ("qwk_nested_other", other if report["qwk_nested_other"] else None)):
        if key == "qwk_nested_other" and rows is None:
            report.update({f"{key}_low": None, f"{key}_high": None})
            continue
        boot = bootstrap_qwk(y, {name: nested_scores}, oofs.fold, rows, n_draws=n_draws, level=level, seed=seed)
        report[f"{key}_low"], report[f"{key}_high"] = boot.interval(name)
    return report
