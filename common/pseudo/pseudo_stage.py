"""Stage 01_pseudo_label's logic: each student's soft pseudo-labels of the external essays, fold by fold.

Fold k of a student's `teacher` (trained by 02_train without fold k) predicts every external essay that is
no copy of a train essay; the predictions become soft labels (`common.train.pseudo.soft_labels`). Only the
student's fold k reads them, so no label ever comes from a model that saw the fold it is evaluated on. A
teacher with several seeds labels with the mean of its fold-k models; a teacher that is a student itself (a
second round) is as leak-free: its fold-k model trained on labels from its own teacher's fold k.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.config.layout import fold_dir, fold_units, pseudo_dir, pseudo_plots_dir
from common.config.model_params import ModelParams
from common.config.params import Params
from common.core.errors import PipelineError
from common.core.io import staged_dir, write_csv, write_json, write_parquet
from common.prepare.data import load_competition_data
from common.prepare.folds import folds_fingerprint
from common.scoring.oof import read_folds
from common.scoring.reports import plot_bars
from common.train.pseudo import (
    PROB_COLUMNS,
    distribution_report,
    drop_train_copies,
    pseudo_frame,
    read_external,
    soft_labels,
)
from common.train.trained_folds import trained_config, unit_fingerprints

log = logging.getLogger(__name__)


def label_students(params: Params) -> None:
    """Pseudo-labels of every student of train.students (or only train.model) under paths.output."""
    out, t = params.output_dir, params.train
    students = {n: s for n, s in t.students.items() if not t.model or n == t.model}
    if t.model and not students:
        raise PipelineError(f"train.model={t.model!r} is not a student (train.students: "
                            f"{', '.join(t.students) or 'none'}); only students get pseudo-labels")
    if not students:
        log.info("no model in train.students: no pseudo-labels to make")
        return
    folds = read_folds(out / "prepare" / "folds.parquet")
    external = _external_essays(params)
    from common.core.devices import inference_devices
    from common.infer.inference import TokenCache

    devices = inference_devices(t.device)
    cache = TokenCache(external["full_text"].tolist())
    for student, spec in students.items():
        teacher = t.all_models[spec.teacher]
        _check_teacher(out, student, teacher, folds, params.seed)
        label_student(params, student, teacher, folds, external, cache, devices)


def _teacher_predictions(params: Params, spec: ModelParams, fold: int, cache, devices
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's fold-`fold` predictions of the external essays, averaged over its seeds."""
    from common.infer.inference import predict_fold_model

    preds, probs = [], []
    for unit in fold_units(spec, [fold], params.seed):
        folder = fold_dir(params.output_dir, spec.name, unit.fold, unit.seed)
        ids, collator = cache.get(folder)
        pred, prob = predict_fold_model(folder, ids, collator, devices, "auto", params.infer.batch_tokens,
                                        desc=f"{spec.name} {unit.label}")
        preds.append(pred)
        if prob is not None:
            probs.append(prob)
    return np.mean(preds, axis=0), (np.mean(probs, axis=0) if probs else None)


def _external_essays(params: Params) -> pd.DataFrame:
    """The external essays to label: those that equal no train essay after normalisation."""
    out, prep = params.output_dir, params.prepare
    external_path = out / "prepare" / "external.parquet"
    external = read_external(external_path)
    train = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file).train
    keep = drop_train_copies(external["full_text"].tolist(), train["full_text"].tolist())
    if (~keep).any():
        log.warning("%d external essays equal train essays after normalisation: not labelled", int((~keep).sum()))
    external = external[keep].reset_index(drop=True)
    if external.empty:
        raise PipelineError(f"{external_path}: no external essays to pseudo-label")
    return external


def _check_teacher(out: Path, student: str, spec: ModelParams, folds: pd.DataFrame, seed: int) -> None:
    """Every fold (and seed) of the teacher trained, on the current folds (else it may have seen what it labels)."""
    teacher = spec.name
    fold_ids = sorted(folds["fold"].unique().tolist())
    current = folds_fingerprint(folds)
    configs = {u: trained_config(fold_dir(out, teacher, u.fold, u.seed)) for u in fold_units(spec, fold_ids, seed)}
    missing = sorted({u.fold for u, c in configs.items() if c is None})
    stale = sorted({u.fold for u, c in configs.items() if c is not None and c.get("folds") != current})
    if missing or stale:
        what = "; ".join(p for p in (f"no trained model for fold(s) {missing}" if missing else "",
                                     f"fold(s) {stale} trained on other folds (00_prepare ran since), so they "
                                     "may have seen the essays they would label for" if stale else "") if p)
        raise PipelineError(f"teacher {teacher!r} of {student}: {what} in {fold_dir(out, teacher, 0).parent}. "
                            f"Train it first: python 02_train/run.py train.model={teacher}")


def label_student(params: Params, student: str, spec: ModelParams, folds: pd.DataFrame, external: pd.DataFrame,
                  cache, devices) -> None:
    """output/pseudo/<student>/: fold_<k>.parquet from the teacher's fold k (the mean of its seeds' fold-k
    models, none of which saw fold k), report.csv, metrics.json; the score shares' plot in
    output/plots/pseudo/<student>/ (where `dvc plots show` finds it: a plot folder holds plots only)."""
    out, teacher = params.output_dir, spec.name
    fold_ids = sorted(folds["fold"].unique().tolist())
    with staged_dir(pseudo_dir(out, student)) as tmp:
        summary = {}
        for k in fold_ids:
            preds, probs = _teacher_predictions(params, spec, k, cache, devices)
            labels = soft_labels(preds, probs, params.pseudo.regression_sigma)
            frame = pseudo_frame(external["essay_id"], labels, teacher, k)
            write_parquet(tmp / f"fold_{k}.parquet", frame)
            summary[str(k)] = {"n": len(frame), "mean_expected": float(frame["expected"].mean())}
            log.info("%s fold %d: %d essays labelled by %s fold %d, mean expected score %.2f", student, k,
                     len(frame), teacher, k, frame["expected"].mean())
        write_csv(tmp / "report.csv", distribution_report(frame, external, folds))
        write_json(tmp / "metrics.json", {"student": student, "teacher": teacher, "n_external": len(external),
                                          "folds": summary, "train_mean_score": float(folds["score"].mean()),
                                          "folds_fingerprint": folds_fingerprint(folds),
                                          "teacher_fingerprints": unit_fingerprints(out, spec, fold_ids, params.seed)})
    shares = frame[PROB_COLUMNS].mean()
    train_shares = folds["score"].value_counts(normalize=True).sort_index()
    plot_bars({**{f"pseudo {c[-1]}": float(v) for c, v in shares.items()},
               **{f"train {s}": float(v) for s, v in train_shares.items()}},
              pseudo_plots_dir(out, student) / "distribution.png",
              f"Score shares: pseudo-labels of {student} (last fold) vs train", "share")
