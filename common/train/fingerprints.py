"""Fingerprints: what a trained fold depends on, hashed, so a re-run of 02_train keeps a fold exactly when
nothing it depends on changed.

`fold_fingerprint` hashes a fold's settings (`unit_settings`), backbone (`backbone_identity`), seed, fold,
pseudo-labels, TRAINING_VERSION and `data_fingerprint` (the folds table and every essay text). A trained fold's
train_config.json and its checkpoints hold it (common.train.trained_folds reads it back). The bytes hashed must
not change with a refactor: a fold trained before one must still be kept after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from common.config.model_params import ModelParams
from common.prepare.folds import folds_fingerprint


def data_fingerprint(folds_frame: pd.DataFrame, texts: Sequence[str], pseudo_texts: Sequence[str] = ()) -> str:
    """Hash of the folds table and every essay text (train, then pseudo-labelled) a model trains on.

    It reads every essay (seconds on the competition's data), so 02_train hashes it once per stage run for the
    same data and hands it down (`train_stage.train_models`, `tokenize_train(source=...)`)."""
    digest = hashlib.sha256(folds_fingerprint(folds_frame).encode())
    add_texts(digest, [*texts, "\0pseudo", *pseudo_texts])
    return digest.hexdigest()[:16]


def add_texts(digest, texts: Sequence[str]) -> None:
    """Feed every text, in order and each one delimited, into a hashlib digest."""
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")


TRAINING_VERSION = 1
"""Part of every fold's fingerprint: raise it with a change to training or model code that changes what a
fold trains to, so folds trained before it are trained again (a refactor leaves it, and the folds are kept)."""


def backbone_identity(backbone: str) -> str:
    """The backbone as the fingerprint sees it: an MLM-adapted one by its own fingerprint, not by the folder
    it sits in (moving paths.output must not retrain anything); any other by its name or path."""
    path = Path(backbone)
    if path.name == "backbone" and path.parent.parent.name == "mlm":
        return f"mlm:{path.parent.name}"
    return backbone


UNIT_INDEPENDENT = ("seeds", "full_fit")
"""Model settings that choose which units train, not what one trains to: left out of the fingerprint, so
adding a seed or a full fit keeps every trained fold."""

NEUTRAL_AT_DEFAULT = ("windows", "window_overlap", "random_crop", "max_length_schedule", "swa_start", "batch_tokens",
                      "kind", "tfidf")
"""Settings added after folds were first fingerprinted, whose default trains exactly what training did before
they existed: at their default they are left out of the fingerprint and of train_config.json, so a pipeline
upgrade that adds such a setting keeps the folds trained before it (no GPU hours spent again). A new setting
whose default is "off" goes here; one that changes training at its default raises TRAINING_VERSION instead."""


def unit_settings(spec: ModelParams) -> dict:
    """What a trained fold records of its model's settings (and what its fingerprint hashes): every setting but
    UNIT_INDEPENDENT ones and NEUTRAL_AT_DEFAULT ones left at their defaults."""
    defaults = asdict(ModelParams())
    return {k: v for k, v in asdict(spec).items()
            if k not in UNIT_INDEPENDENT and not (k in NEUTRAL_AT_DEFAULT and v == defaults[k])}


def fold_fingerprint(spec: ModelParams, backbone: str, source: str, pseudo_labels: np.ndarray | None,
                     fold: int | None, seed: int, stop_fraction: float | None = None) -> str:
    """What a fold's model depends on: settings, backbone, seed, fold, essays and folds, its pseudo-labels
    (the full fit, fold None: also where CV stopped, `stop_fraction`).

    A trained fold whose `train_config.json` holds the same fingerprint is kept; a checkpoint with another
    one is ignored.
    """
    pseudo = ""
    if spec.uses_pseudo and pseudo_labels is not None:
        # Rounded: fp16 inference on another GPU count or batching may move the last bits, not the labels.
        labels = np.round(np.asarray(pseudo_labels, np.float64), 4)
        pseudo = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    payload = {"spec": unit_settings(spec), "backbone": backbone_identity(backbone), "fold": fold, "seed": seed,
               "data": source, "pseudo": pseudo, "engine": TRAINING_VERSION}
    if fold is None:
        payload["stop"] = round(float(stop_fraction if stop_fraction is not None else 1.0), 4)
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
