"""How long inference of every member model takes: measured here, and estimated for Kaggle's T4 from FLOPs.

05_infer logs the estimate before predicting and warns when it exceeds Kaggle's limit (`infer.time_limit_hours`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import safe_open

from common.infer.artifacts import ArtifactSet
from common.models.text_model import is_text_model

# Effective fp16 throughput of a T4 on transformer encoders (65 TFLOP/s peak tensor-core fp16; encoders
# at batch sizes that fit reach roughly a fifth of it). Used only for the printed runtime estimate.
T4_EFFECTIVE_FLOPS = 13e12


def count_parameters(fold_dir: Path) -> int:
    """Parameters of a saved fold model, read from its safetensors header (no weights loaded); 0 for a text model
    (no encoder: its cost per essay is negligible beside one)."""
    if is_text_model(fold_dir):
        return 0
    weights = fold_dir / "model.safetensors"
    if not weights.is_file():
        config = json.loads((fold_dir / "backbone" / "config.json").read_text()) if (
            fold_dir / "backbone" / "config.json").is_file() else {}
        hidden, layers = config.get("hidden_size", 768), config.get("num_hidden_layers", 12)
        return 12 * layers * hidden * hidden
    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        names = handle.keys()  # a safe_open handle is not iterable itself
        for key in names:
            total += math.prod(handle.get_slice(key).get_shape())
    return total


def estimate_runtime(artifacts: ArtifactSet, mean_tokens: float, n_essays: int, measured_essays_per_s: float | None,
                     limit_hours: float) -> dict:
    """Hours for `n_essays` with every member model: from this run's measured speed, and on a T4 (FLOPs).

    The T4 figure counts 2 x parameters FLOPs per token (the encoder's matmuls; attention adds a little
    at 1024 tokens) at T4_EFFECTIVE_FLOPS. Both are estimates; Kaggle's limit is checked on the larger.
    """
    n_fold_models = sum(len(artifacts.fold_dirs[m]) for m in artifacts.models)
    flops = sum(2 * count_parameters(artifacts.fold_dirs[m][0]) * mean_tokens * n_essays * len(artifacts.fold_dirs[m])
                for m in artifacts.models)
    t4_hours = flops / T4_EFFECTIVE_FLOPS / 3600
    here_hours = n_essays * n_fold_models / measured_essays_per_s / 3600 if measured_essays_per_s else None
    worst = max(t4_hours, here_hours or 0.0)
    return {"n_essays": n_essays, "n_fold_models": n_fold_models, "t4_hours": t4_hours,
            "this_device_hours": here_hours, "limit_hours": limit_hours, "within_limit": worst < limit_hours}
