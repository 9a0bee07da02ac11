"""The LR range test of a model on the tiny backbone: training's own model, optimizer and batches."""

import json

import pandas as pd
import pytest

from common.config.model_params import ModelParams, ScorerParams, StageParams
from common.train.lr_find import find_lr, lr_find_dir
from tests.conftest import BACKBONE, fold_table

pytestmark = pytest.mark.slow


def test_lr_range_test_writes_the_curve_and_a_suggestion_and_trains_nothing(tmp_path):
    _, table, texts = fold_table(seed=5, n_train=64, n_corpus_only=10)
    spec = ModelParams(name="t", max_length=48, stages=[StageParams(epochs=1.0)], batch_size=8,
                       effective_batch_size=16, lr=1e-3, head_lr=5e-3, warmup_ratio=0.5,  # the schedule starts at 0
                       scorer=ScorerParams(dropout=0.0))
    suggested = find_lr(spec, BACKBONE, table, texts, tmp_path, seed=3, device="cpu", lr_min=1e-5, lr_max=10.0,
                        steps=24)
    folder = lr_find_dir(tmp_path, "t")
    curve = pd.read_csv(folder / "lr_find.csv")
    assert list(curve.columns) == ["lr", "loss", "smoothed_loss"] and curve["lr"].is_monotonic_increasing
    assert curve["lr"].iloc[0] == pytest.approx(1e-5)
    saved = json.loads((folder / "suggestion.json").read_text())
    assert saved["params_lr"] == 1e-3 and saved["steps"] == len(curve)
    assert suggested is not None and 1e-5 < suggested < curve["lr"].iloc[-1]
    assert saved["suggested_lr"] == pytest.approx(suggested)
    assert curve["smoothed_loss"].min() < curve["smoothed_loss"].iloc[0]  # the loss fell before the suggestion
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "lr_find"]
    assert not any((tmp_path / "checkpoints").rglob("*.pt"))  # the scratch run leaves nothing behind
