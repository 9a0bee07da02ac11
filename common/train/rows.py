"""The rows a fold trains on: the tokenised essays (`TrainData`), each stage's row indices, their targets (hard
scores, or soft labels with pseudo-labelled rows) and how pseudo rows weigh in a batch's loss.

Rows 0 .. n - 1 are the train essays in folds-table order; a student's pseudo-labelled external essays follow
as rows n .. n + m - 1 and are never held out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from common.config.model_params import ModelParams, StageParams
from common.models.tokenization import TokenSettings, load_tokenizer, model_token_ids
from common.prepare.folds import folds_fingerprint
from common.train.fingerprints import data_fingerprint
from common.train.pseudo import StudentPseudo


@dataclass
class TrainData:
    """Train essays, already tokenised for one model, with labels, folds and origins (n rows)."""

    essay_ids: np.ndarray
    input_ids: list[list[int]]
    scores: np.ndarray  # (n,) int 1..6
    folds: np.ndarray  # (n,) int
    origins: np.ndarray  # (n,) "persuade" / "other"
    # Pseudo-labelled external essays (students only): token ids (m rows) and soft labels per fold.
    pseudo_ids: list[list[int]] | None = None
    pseudo_labels: dict[int, np.ndarray] | None = None  # fold -> (m, 6), from a teacher that never saw it
    source: str = ""  # fingerprint of the folds table and essay texts the rows come from (`data_fingerprint`)
    folds_hash: str = ""  # fingerprint of the folds table alone (`folds_fingerprint`)


def tokenize_train(spec: ModelParams, backbone: str, folds_frame: pd.DataFrame, texts: list[str],
                   pseudo: StudentPseudo | None = None, source: str | None = None):
    """Tokenizer of the model and the tokenised essays (one pass, shared by every fold).

    `source`: the rows' `data_fingerprint` when the caller has it already (hashed here otherwise)."""
    tokenizer = load_tokenizer(backbone, add_newline_tokens=spec.add_newline_tokens, padding_side=spec.padding_side)

    settings = TokenSettings.of(spec)

    def tokenize(batch: list[str]) -> list[list[int]]:
        return model_token_ids(tokenizer, batch, settings)

    input_ids = tokenize(texts)
    data = TrainData(
        essay_ids=folds_frame["essay_id"].to_numpy(),
        input_ids=input_ids,
        scores=folds_frame["score"].to_numpy(),
        folds=folds_frame["fold"].to_numpy(),
        origins=folds_frame["origin"].to_numpy(),
        pseudo_ids=tokenize(pseudo.texts) if pseudo is not None else None,
        pseudo_labels=pseudo.labels if pseudo is not None else None,
        source=source if source is not None else data_fingerprint(
            folds_frame, texts, pseudo.texts if pseudo is not None else ()),
        folds_hash=folds_fingerprint(folds_frame),
    )
    return tokenizer, data


def fold_pseudo_labels(labels: dict[int, np.ndarray] | None, fold: int | None) -> np.ndarray | None:
    """The soft labels a fold trains on (from a teacher that never saw it); the full fit (fold None), which is
    never evaluated, takes their mean over the folds."""
    if not labels:
        return None
    if fold is None:
        return np.mean([labels[k] for k in sorted(labels)], axis=0)
    return labels.get(fold)


def stage_rows(data: TrainData, fold: int | None, stage: StageParams) -> np.ndarray:
    """Indices of a stage's training rows (never the held-out fold; every labelled row for the full fit, fold
    None): an origin subset, and / or the pseudo rows.

    Pseudo-labelled essays are numbered after the n train essays: n .. n + m - 1.
    """
    n = len(data.scores)
    pseudo = np.arange(n, n + len(data.pseudo_ids or []))
    if stage.rows == "pseudo":
        return pseudo
    train = data.folds != fold if fold is not None else np.ones(n, dtype=bool)
    rows = np.flatnonzero(train) if stage.rows == "all" else np.flatnonzero(train & (data.origins == stage.rows))
    return np.concatenate([rows, pseudo]) if stage.with_pseudo else rows


def soft_targets(scores: np.ndarray) -> np.ndarray:
    """Hard scores 1..6 as one-hot distributions: every head's loss on them equals its hard-label loss."""
    return np.eye(6, dtype=np.float32)[np.asarray(scores, dtype=np.int64) - 1]


def batch_loss(loss_fn, logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor, weight: float
               ) -> torch.Tensor:
    """Mean loss over the batch, pseudo rows weighted `weight` relative to labelled rows.

    With soft labels the classification and ordinal heads use the KL divergence / cumulative BCE
    against the distribution, the regression head MSE on its expectation (common.models.parts.losses).
    """
    if not bool(pseudo.any()) or bool(pseudo.all()):
        return loss_fn(logits, targets)
    n_real, n_pseudo = int((~pseudo).sum()), int(pseudo.sum())
    real_loss = loss_fn(logits[~pseudo], targets[~pseudo])
    pseudo_loss = loss_fn(logits[pseudo], targets[pseudo])
    return (n_real * real_loss + weight * n_pseudo * pseudo_loss) / (n_real + weight * n_pseudo)
