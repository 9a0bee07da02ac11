"""A model's OOF file: its trained folds' held-out predictions collected into oof.parquet, metrics.json and log.csv.

Written once every fold is trained on the current folds table (a fold trained on another counts as missing);
with several seeds a fold's predictions are the mean over its seeds, as 05_infer averages the test predictions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.config.layout import Unit, fold_dir, fold_units, model_dir, model_seeds
from common.config.model_params import ModelParams
from common.core.io import write_csv, write_json, write_parquet
from common.core.tracking import write_headline
from common.prepare.folds import folds_fingerprint
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores
from common.train.engine import TrainingError
from common.train.trained_folds import trained_config

log = logging.getLogger(__name__)


def collect_oof(out: Path, spec: ModelParams, folds: pd.DataFrame, seed: int, required: bool = False,
                headline: Path | None = None) -> bool:
    """Write the model's `oof.parquet`, `metrics.json` and `log.csv` once every fold is trained on these folds.

    With several seeds, a fold's OOF predictions (and class probabilities) are the mean over its seeds, as
    05_infer averages the test predictions; metrics.json also scores each seed alone. A fold trained on
    another folds table (00_prepare re-run since) counts as missing. With `required`, a missing fold is an
    error naming the command that trains it; otherwise it is logged and False returned.
    """
    name = spec.name
    fold_ids = sorted(folds["fold"].unique().tolist())
    units = fold_units(spec, fold_ids, seed)
    seeds = model_seeds(spec, seed)
    current = folds_fingerprint(folds)
    absent, stale = [], []
    for unit in units:
        config = trained_config(fold_dir(out, name, unit.fold, unit.seed))
        if config is None:
            absent.append(unit.fold)
        elif config.get("folds") != current:
            stale.append(unit.fold)
    absent, stale = sorted(set(absent)), sorted(set(stale) - set(absent))
    if absent or stale:
        what = ", ".join(p for p in (f"fold(s) {absent} not trained" if absent else "",
                                     f"fold(s) {stale} trained on other folds (00_prepare ran since)" if stale
                                     else "") if p)
        if required:
            raise TrainingError(f"{name}: {what}, so its oof.parquet cannot be written. Train them: python "
                                f"02_train/run.py train.model={name}")
        log.info("%s: %s; OOF file written once every fold is trained", name, what)
        return False
    folder = model_dir(out, name)
    per_unit = {unit: pd.read_parquet(fold_dir(out, name, unit.fold, unit.seed) / "oof.parquet") for unit in units}
    oof = pd.concat(per_unit.values(), ignore_index=True).groupby(["essay_id", "fold"], sort=False).mean()
    oof = oof.reset_index()
    metrics = {**_oof_scores(folds, oof),
               "folds_fingerprint": current,
               "folds": {_summary_key(unit): _fold_summary(fold_dir(out, name, unit.fold, unit.seed))
                         for unit in units},
               "mlm": _mlm_summary(fold_dir(out, name, units[0].fold, units[0].seed))}
    if len(seeds) > 1:
        metrics["seeds"] = {str(s): _oof_scores(
            folds, pd.concat([per_unit[u] for u in units if u.run_seed(seed) == s]))["qwk_rounded"] for s in seeds}
    logs = [pd.read_csv(fold_dir(out, name, u.fold, u.seed) / "log.csv").assign(fold=u.fold) for u in units]
    if len(seeds) > 1:
        logs = [frame.assign(seed=u.run_seed(seed)) for frame, u in zip(logs, units, strict=True)]
    write_parquet(folder / "oof.parquet", oof)
    write_csv(folder / "log.csv", pd.concat(logs, ignore_index=True))
    write_json(folder / "metrics.json", metrics)
    if headline is not None:
        write_headline(headline, {k: metrics[k] for k in ("qwk_rounded", "qwk_rounded_other", "rmse")}
                       | ({"seeds": metrics["seeds"]} if "seeds" in metrics else {}))
    log.info("%s: OOF QWK (rounded) %.4f on all rows, %s on other-origin rows%s", name, metrics["qwk_rounded"],
             "n/a" if metrics["qwk_rounded_other"] is None else f"{metrics['qwk_rounded_other']:.4f}",
             f" (mean of {len(seeds)} seeds; each alone: " + ", ".join(
                 f"{v:.4f}" for v in metrics["seeds"].values()) + ")" if "seeds" in metrics else "")
    return True


def _summary_key(unit: Unit) -> str:
    """metrics.json's key of a fold model: the fold number, with its seed when the model lists seeds."""
    return str(unit.fold) if unit.seed is None else f"{unit.fold}_seed{unit.seed}"


def _oof_scores(folds: pd.DataFrame, oof: pd.DataFrame) -> dict:
    """Rounded QWK on all and other-origin rows, and RMSE, of OOF predictions."""
    merged = folds[["essay_id", "score", "origin"]].merge(oof, on="essay_id", how="inner")
    other = (merged["origin"] == "other").to_numpy()
    scores = round_scores(merged["pred"].to_numpy())
    y = merged["score"].to_numpy()
    return {"qwk_rounded": qwk(y, scores),
            "qwk_rounded_other": qwk(y[other], scores[other]) if other.any() else None,
            "rmse": float(np.sqrt(np.mean((merged["pred"].to_numpy() - y) ** 2)))}


def _fold_summary(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def _mlm_summary(folder: Path) -> dict | None:
    """Held-out MLM loss before and after, when the fold's backbone was adapted by masked-language modelling."""
    from common.train.mlm import METRICS_FILE

    backbone = json.loads((folder / "train_config.json").read_text(encoding="utf-8")).get("backbone", "")
    path = Path(backbone) / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}
