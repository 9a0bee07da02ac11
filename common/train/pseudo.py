"""Soft pseudo-labels on the external corpus, made and consumed without leaking the validation folds.

The rules that keep a fold's held-out QWK honest:
- Fold k's labels come from the teacher's fold-k model, which never trained on fold k, and only fold
  k's students read them (`fold_<k>.parquet` records the teacher fold; `load_student_pseudo` checks it).
- No external essay that is also a train essay is labelled: 00_prepare already drops corpus essays that
  match train exactly or as near duplicates (external.parquet), and both the making and the reading of
  pseudo-labels drop any whose normalised text still equals a train essay's (`drop_train_copies`), so a
  stale or hand-made file cannot smuggle a held-out essay in either.

Soft labels are probabilities over the scores 1..6: a classification or ordinal teacher's class
probabilities, or for a regression teacher a normal distribution around its prediction (sd
`regression_sigma`) discretised on 1..6; `expected` is the expected score under them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from common.core.errors import PipelineError
from common.prepare.duplicates import normalize_text

log = logging.getLogger(__name__)

SCORES = np.arange(1, 7)
PROB_COLUMNS = [f"prob_{s}" for s in SCORES]


def spread_regression(preds: np.ndarray, sigma: float) -> np.ndarray:
    """(n,) predictions -> (n, 6) probabilities: N(pred, sigma) integrated over [s - 0.5, s + 0.5],
    with the tails folded into scores 1 and 6 so every row sums to 1."""
    if sigma <= 0:
        raise ValueError(f"regression_sigma must be > 0, got {sigma}")
    preds = np.asarray(preds, dtype=np.float64)[:, None]
    edges = np.concatenate([[-np.inf], SCORES[:-1] + 0.5, [np.inf]])
    cdf = norm.cdf((edges[None, :] - preds) / sigma)
    return np.diff(cdf, axis=1)


def soft_labels(preds: np.ndarray, probs: np.ndarray | None, sigma: float) -> np.ndarray:
    """Normalised (n, 6) soft labels from a teacher's predictions and, when it has them, probabilities."""
    labels = spread_regression(preds, sigma) if probs is None else np.clip(np.asarray(probs, float), 0, None)
    total = labels.sum(axis=1, keepdims=True)
    if (total <= 0).any() or not np.isfinite(labels).all():
        raise PipelineError("teacher gave non-finite or all-zero class probabilities; check its predictions")
    return labels / total


def drop_train_copies(texts: Sequence[str], train_texts: Sequence[str]) -> np.ndarray:
    """Boolean mask of `texts` to keep: those whose normalised text is no train essay's."""
    train_keys = {normalize_text(t) for t in train_texts}
    return np.array([normalize_text(t) not in train_keys for t in texts], dtype=bool)


def pseudo_frame(essay_ids: Sequence[str], labels: np.ndarray, teacher: str, fold: int) -> pd.DataFrame:
    """The contents of fold_<k>.parquet: essay_id, prob_1..prob_6, expected, teacher, teacher_fold."""
    frame = pd.DataFrame(labels, columns=PROB_COLUMNS)
    frame.insert(0, "essay_id", list(essay_ids))
    frame["expected"] = labels @ SCORES
    frame["teacher"] = teacher
    frame["teacher_fold"] = fold
    return frame


def distribution_report(pseudo: pd.DataFrame, external: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: the soft pseudo-label distribution beside the train score distribution (shares)."""
    merged = pseudo.merge(external[["essay_id", "prompt_name"]], on="essay_id", how="left")
    rows = []
    for prompt, group in merged.groupby("prompt_name", dropna=False):
        train_rows = folds[folds["prompt_name"] == prompt]
        row = {"prompt_name": prompt, "n_pseudo": len(group), "n_train": len(train_rows),
               "pseudo_mean": float(group["expected"].mean()),
               "train_mean": float(train_rows["score"].mean()) if len(train_rows) else None}
        shares = group[PROB_COLUMNS].mean().to_numpy()
        train_shares = (train_rows["score"].value_counts(normalize=True).reindex(SCORES, fill_value=0.0).to_numpy()
                        if len(train_rows) else np.full(6, np.nan))
        for s, a, b in zip(SCORES, shares, train_shares, strict=True):
            row[f"pseudo_{s}"], row[f"train_{s}"] = float(a), float(b)
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class StudentPseudo:
    """Pseudo-labelled essays for students: texts once, soft labels per fold (rows in the same order)."""

    essay_ids: np.ndarray
    texts: list[str]
    labels: dict[int, np.ndarray]  # fold -> (m, 6)


def read_external(path: Path) -> pd.DataFrame:
    """external.parquet of 00_prepare: the corpus essays that match no train essay."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run 00_prepare first (python 00_prepare/run.py)")
    return pd.read_parquet(path)


def _teacher_changes(meta: Mapping, now: Mapping[str, str | None], teacher: str | None) -> list[str]:
    """What metrics.json of pseudo-labels says of the teacher's fold models that made them, against `now`."""
    made = meta.get("teacher_fingerprints")
    if not isinstance(made, dict):
        return ["they do not record the teacher fold models that made them (made by an older version)"]
    changed = [unit for unit, fingerprint in now.items() if fingerprint is not None and made.get(unit) != fingerprint]
    return [f"teacher {teacher or meta.get('teacher')!r} changed since they were made: {', '.join(changed)} trained "
            "again"] if changed else []


def load_student_pseudo(pseudo_dir: Path, external_path: Path, fold_ids: Sequence[int],
                        train_texts: Sequence[str], folds_hash: str | None = None,
                        teacher: str | None = None,
                        teacher_fingerprints: Mapping[str, str | None] | None = None) -> StudentPseudo:
    """Read fold_<k>.parquet for every fold, check it, and drop any essay that is a train essay.

    With `folds_hash` (of the current folds table) and `teacher`, labels made on other folds or by
    another teacher are refused: fold k's labels are leak-free only if the teacher's fold k held out
    today's fold k. With `teacher_fingerprints` ({unit: fingerprint} of the teacher's fold models now), labels
    made by teacher folds that have trained again since are refused too (by hand, nothing else re-makes them).
    """
    made = pseudo_dir / "metrics.json"
    if folds_hash is not None and made.is_file():
        meta = json.loads(made.read_text(encoding="utf-8"))
        wrong = []
        if meta.get("folds_fingerprint") != folds_hash:
            wrong.append("they were made on other folds (00_prepare ran since)")
        if teacher is not None and meta.get("teacher") != teacher:
            wrong.append(f"they come from teacher {meta.get('teacher')!r}, not {teacher!r}")
        if teacher_fingerprints is not None:
            wrong.extend(_teacher_changes(meta, teacher_fingerprints, teacher))
        if wrong:
            raise PipelineError(f"{pseudo_dir}: " + " and ".join(wrong) + ". Make them again: python "
                                f"01_pseudo_label/run.py train.model={pseudo_dir.name}")
    external = read_external(external_path).set_index("essay_id")
    frames = {}
    for k in fold_ids:
        path = pseudo_dir / f"fold_{k}.parquet"
        if not path.is_file():
            raise PipelineError(f"{path} not found: make the student's pseudo-labels first (python "
                                f"01_pseudo_label/run.py train.model={pseudo_dir.name})")
        frame = pd.read_parquet(path)
        problems = []
        if set(frame.get("teacher_fold", pd.Series([k])).unique()) != {k}:
            problems.append(f"labels from teacher fold(s) {sorted(frame['teacher_fold'].unique())}, not {k}")
        probs = frame[PROB_COLUMNS].to_numpy() if set(PROB_COLUMNS) <= set(frame.columns) else None
        if probs is None:
            problems.append(f"columns {PROB_COLUMNS} missing")
        elif not (np.isfinite(probs).all() and (probs >= 0).all() and np.allclose(probs.sum(1), 1, atol=1e-4)):
            problems.append("rows are not probability distributions (finite, >= 0, summing to 1)")
        unknown = sorted(set(frame["essay_id"]) - set(external.index))
        if unknown:
            problems.append(f"essay ids not in {external_path.name}: {unknown[:5]}")
        if problems:
            raise PipelineError(f"{path}: " + "; ".join(problems) + ". Make them again: python "
                                f"01_pseudo_label/run.py train.model={pseudo_dir.name}")
        frames[k] = frame.set_index("essay_id")
    ids = sorted(set.intersection(*(set(f.index) for f in frames.values()))) if frames else []
    texts = external.loc[ids, "full_text"].tolist()
    keep = drop_train_copies(texts, train_texts)
    if (~keep).any():
        log.warning("%d pseudo-labelled essays are copies of train essays: dropped (they would leak labels)",
                    int((~keep).sum()))
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    texts = [t for t, k in zip(texts, keep, strict=True) if k]
    labels = {k: frames[k].loc[ids, PROB_COLUMNS].to_numpy(dtype=np.float32) for k in fold_ids}
    log.info("pseudo-labels: %d external essays for each of %d folds", len(ids), len(fold_ids))
    return StudentPseudo(essay_ids=np.array(ids, dtype=object), texts=texts, labels=labels)
