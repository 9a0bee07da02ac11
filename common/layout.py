"""Where each artifact lives under paths.output: the one place that spells the folder layout.

    train/<model>/folds/fold_<k>/   one fold's model, tokenizer, config, held-out predictions, log
    train/<model>/oof.parquet       the model's out-of-fold predictions (+ metrics.json, log.csv)
    pseudo/<student>/fold_<k>.parquet   soft labels for a student's fold k (from its teacher's fold k)
    mlm/<fingerprint>/backbone/     a backbone adapted by masked-language modelling (shared by models)
    checkpoints/<model>/fold_<k>/   resumable checkpoints while a fold trains (removed when it is done)
    checkpoints/mlm/<fingerprint>/  the same while a backbone is adapted
    timings/<model>/fold_<k>.json   a fold's wall-clock time and speed; timings/<stage>.json a stage's:
                                    figures that change from run to run stay out of what dvc.lock hashes

Every fold folder of a model sits under one parent (`folds/`), so dvc.yaml declares it as one output
whatever `prepare.n_folds` says.
"""

from __future__ import annotations

from pathlib import Path


def model_dir(out: Path, name: str) -> Path:
    return Path(out) / "train" / name


def fold_dir(out: Path, name: str, fold: int) -> Path:
    return model_dir(out, name) / "folds" / f"fold_{fold}"


def pseudo_dir(out: Path, student: str) -> Path:
    return Path(out) / "pseudo" / student


def checkpoint_dir(out: Path, name: str, fold: int) -> Path:
    return Path(out) / "checkpoints" / name / f"fold_{fold}"


def mlm_dir(out: Path, fingerprint: str) -> Path:
    return Path(out) / "mlm" / fingerprint / "backbone"


def mlm_checkpoint(out: Path, fingerprint: str) -> Path:
    return Path(out) / "checkpoints" / "mlm" / fingerprint / "checkpoint.pt"


def timings_file(out: Path, name: str, fold: int) -> Path:
    return Path(out) / "timings" / name / f"fold_{fold}.json"


def stage_timings(out: Path, stage: str) -> Path:
    return Path(out) / "timings" / f"{stage}.json"
