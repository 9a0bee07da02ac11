"""The trained-fold registry: whether a unit's fold folder is complete, and the fingerprint it was trained with.

A fold counts as trained only when its folder holds every file (weights whose header opens, predictions, metrics,
log) and its train_config.json reads; its `fingerprint` (common.train.fingerprints) is then compared with the one
the current settings and data give. 02_train plans with it; 01_pseudo_label records a teacher's fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.config.layout import fold_dir, fold_units
from common.config.model_params import ModelParams


def trained_fingerprint(folder: Path) -> str | None:
    """The fingerprint a trained fold folder was made with, or None when it is incomplete, unreadable or absent
    (such a fold trains again)."""
    config = trained_config(folder)
    return None if config is None else config.get("fingerprint")


def unit_fingerprints(out: Path, spec: ModelParams, fold_ids: list[int], seed: int) -> dict[str, str | None]:
    """{unit name: its trained fingerprint (None: not trained)} of the model's fold models: what a teacher's
    pseudo-labels record of the folds that made them, and what its student compares."""
    return {u.name: trained_fingerprint(fold_dir(out, spec.name, u.fold, u.seed))
            for u in fold_units(spec, fold_ids, seed)}


def trained_config(folder: Path) -> dict | None:
    """A complete fold folder's train_config.json, or None when the folder is incomplete or unreadable."""
    from common.models.text_model import TextModel, is_text_model

    needed = ("train_config.json", "oof.parquet", "metrics.json", "log.csv")
    if not all((folder / name).is_file() for name in needed):
        return None
    if is_text_model(folder):
        if TextModel.problem(folder) is not None:
            return None
    elif not all((folder / name).is_file() for name in ("scorer.json", "tokenizer_config.json")) or \
            not _weights_readable(folder):
        return None
    try:
        config = json.loads((folder / "train_config.json").read_text(encoding="utf-8"))
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _weights_readable(folder: Path) -> bool:
    """The fold's weights header opens (a copy cut short does not): model.safetensors, or a LoRA adapter."""
    from common.core.artifact_checks import safetensors_problem

    return (folder / "adapter").is_dir() or safetensors_problem(folder / "model.safetensors") is None
