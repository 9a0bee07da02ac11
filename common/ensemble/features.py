"""The stacker's input columns: what 04_ensemble fits the stacker on and 05_infer predicts it from.

One function builds them from OOF predictions (04) and from test predictions (05, with the prompt statistics
saved by 04), so the two cannot drift; it lives apart from 04's search (common.ensemble.search), which 05 never loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

TEST_ORIGIN = "other"
"""The origin test essays are taken to have: the hidden test holds none of the corpus essays."""

PromptStats = dict[str, dict[str, list[float]]]
"""Per-prompt statistics of the stacker's prediction and text columns: {column: {cluster: [mean, std]}}."""


def stacker_features(preds: Mapping[str, np.ndarray], probs: Mapping[str, pd.DataFrame],
                     text_frame: pd.DataFrame | None, prompts: np.ndarray | None = None,
                     prompt_stats: PromptStats | None = None, origin_other: np.ndarray | None = None) -> pd.DataFrame:
    """Stacker inputs: one column per model prediction, class probabilities, text features, and, when
    `prompts` (the prompt cluster of each row) and `prompt_stats` are given, prompt features: one 0/1
    column `prompt__<k>` per cluster k of the stats, and `z__<column>`, each prediction and text feature
    standardised within its row's cluster (an essay long for its prompt, a score high for its prompt).

    `origin_other` (1 for other-origin rows, 0 for corpus rows) adds the column `origin__other`: 05_infer
    gives every test essay 1.

    The same function builds them from OOF predictions (04_ensemble) and from test predictions (05_infer),
    the latter with the stats saved from the former.
    """
    parts = [pd.DataFrame({f"pred__{name}": values for name, values in preds.items()})]
    parts.extend(frame.add_prefix(f"{name}__").reset_index(drop=True) for name, frame in probs.items())
    if text_frame is not None:
        parts.append(text_frame.add_prefix("text__").reset_index(drop=True))
    frame = pd.concat(parts, axis=1)
    # LightGBM refuses JSON punctuation in feature names; model names may hold any character.
    frame.columns = [re.sub(r"[^\w.\-]", "_", c) for c in frame.columns]
    if origin_other is not None:
        frame["origin__other"] = np.asarray(origin_other, dtype=np.float64)
    if prompts is None or prompt_stats is None:
        return frame
    prompts = np.asarray(prompts).astype(str)
    classes = sorted(next(iter(prompt_stats.values())), key=int)
    unknown = sorted({str(p) for p in prompts} - set(classes))
    if unknown:
        raise ValueError(f"prompt clusters {unknown} have no statistics (known: {classes})")
    extra = {f"prompt__{k}": (prompts == k).astype(np.float64) for k in classes}
    for column, per_cluster in prompt_stats.items():
        if column not in frame:
            raise ValueError(f"prompt statistics name column {column!r}, which the stacker features lack")
        mean = np.array([per_cluster[k][0] for k in prompts])
        std = np.array([per_cluster[k][1] for k in prompts])
        extra[f"z__{column}"] = (frame[column].to_numpy(dtype=np.float64) - mean) / std
    return pd.concat([frame, pd.DataFrame(extra)], axis=1)


def fit_prompt_stats(X: pd.DataFrame, prompts: np.ndarray, classes: Sequence[int]) -> PromptStats:
    """Mean and standard deviation of every `pred__` and `text__` column of X within each prompt cluster.

    classes: every cluster test essays may be assigned to; one without rows in X gets the statistics of all
    rows. No label is used. A cluster with a single row, or a constant column, gets standard deviation 1.
    """
    prompts = np.asarray(prompts).astype(str)
    stats: PromptStats = {}
    for column in [c for c in X.columns if c.startswith(("pred__", "text__"))]:
        values = X[column].to_numpy(dtype=np.float64)
        stats[column] = {}
        for k in sorted({str(int(c)) for c in classes}, key=int):
            v = values[prompts == k] if (prompts == k).any() else values
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            stats[column][k] = [float(v.mean()), std if std > 1e-12 else 1.0]
    return stats
