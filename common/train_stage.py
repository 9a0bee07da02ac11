"""Stage 02_train's logic: every requested fold of one model, then its OOF file and metrics.

A fold whose folder already holds predictions made with the same settings is skipped, so re-running
the stage after a crash only trains what is missing (and `train_fold` resumes the fold that was
interrupted from its checkpoint).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import ModelParams
from common.io import staged_dir, write_csv, write_json, write_parquet
from common.metrics import qwk
from common.pseudo import StudentPseudo
from common.thresholds import round_scores
from common.training import TrainingError, pseudo_checksum, tokenize_train, train_fold

log = logging.getLogger(__name__)


def _done(fold_dir: Path, spec: ModelParams, backbone: str, seed: int, pseudo: float | None) -> bool:
    config = fold_dir / "train_config.json"
    if not (config.exists() and (fold_dir / "oof.parquet").exists()):
        return False
    saved = json.loads(config.read_text())
    return (saved.get("model") == asdict(spec) and saved.get("backbone") == backbone and saved.get("seed") == seed
            and saved.get("pseudo") == pseudo)


def train_model(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str], out: Path, seed: int,
                only_folds: list[int], device: str, step: str = "all", pseudo: StudentPseudo | None = None) -> None:
    """Train the requested folds of `spec` (all when `only_folds` is empty) and collect its OOF file.

    `step` "fit" only trains (dvc's per-fold stages), "collect" only writes the model's OOF file and
    metrics (every fold must be trained), "all" does both, the OOF file once every fold exists.
    """
    all_folds = sorted(folds["fold"].unique().tolist())
    missing = sorted(set(only_folds) - set(all_folds))
    if missing:
        raise TrainingError(f"train.folds asks for fold(s) {missing}, but folds.parquet has {all_folds}")
    model_dir = out / "train" / spec.name
    if step == "collect":
        if not collect_oof(model_dir, folds):
            absent = [k for k in all_folds if not (model_dir / f"fold_{k}" / "oof.parquet").exists()]
            raise TrainingError(
                f"{spec.name}: fold(s) {absent} of folds.parquet are not trained, so its oof.parquet cannot be "
                f"written. Train them (python 02_train/run.py train.model={spec.name} train.folds={absent}); "
                "under dvc, check that train.dvc_folds and the deps of the oof stage in dvc.yaml list every fold."
            )
        return
    tokenizer, data = tokenize_train(spec, backbone, folds, texts, pseudo)
    for fold in only_folds or all_folds:
        fold_dir = model_dir / f"fold_{fold}"
        if _done(fold_dir, spec, backbone, seed, pseudo_checksum(data, fold, spec)):
            log.info("%s fold %d: already trained with these settings, kept", spec.name, fold)
            continue
        with staged_dir(fold_dir) as tmp:
            result = train_fold(spec, backbone, tokenizer, data, fold, tmp, out / "checkpoints" / spec.name /
                                f"fold_{fold}", seed, device)
            write_parquet(tmp / "oof.parquet", result.oof)
            write_csv(tmp / "log.csv", result.log)
            write_json(tmp / "metrics.json", result.metrics)
        log.info("%s fold %d: held-out QWK (rounded) %.4f in %.0f s", spec.name, fold,
                 result.metrics["qwk_rounded"], result.metrics["seconds"])
    if step == "all":
        collect_oof(model_dir, folds)


def collect_oof(model_dir: Path, folds: pd.DataFrame) -> bool:
    """Write `oof.parquet` and `metrics.json` for the model once every fold is trained."""
    fold_ids = sorted(folds["fold"].unique().tolist())
    parts = [model_dir / f"fold_{k}" / "oof.parquet" for k in fold_ids]
    if not all(p.exists() for p in parts):
        absent = [k for k, p in zip(fold_ids, parts, strict=True) if not p.exists()]
        log.info("%s: fold(s) %s not trained yet; OOF file written once they are", model_dir.name, absent)
        return False
    oof = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    merged = folds[["essay_id", "score", "origin"]].merge(oof, on="essay_id", how="inner")
    other = (merged["origin"] == "other").to_numpy()
    scores = round_scores(merged["pred"].to_numpy())
    y = merged["score"].to_numpy()
    metrics = {
        "qwk_rounded": qwk(y, scores),
        "qwk_rounded_other": qwk(y[other], scores[other]) if other.any() else None,
        "folds": {str(k): json.loads((model_dir / f"fold_{k}" / "metrics.json").read_text()) for k in fold_ids},
        "rmse": float(np.sqrt(np.mean((merged["pred"].to_numpy() - y) ** 2))),
    }
    logs = [pd.read_csv(model_dir / f"fold_{k}" / "log.csv").assign(fold=k) for k in fold_ids]
    write_parquet(model_dir / "oof.parquet", oof)
    write_csv(model_dir / "log.csv", pd.concat(logs, ignore_index=True))
    write_json(model_dir / "metrics.json", metrics)
    log.info("%s: OOF QWK (rounded) %.4f on all rows, %s on other-origin rows", model_dir.name,
             metrics["qwk_rounded"], metrics["qwk_rounded_other"])
    return True
