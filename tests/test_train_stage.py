"""Stage 02_train end to end through its command line on generated demo data."""

import json
import shutil

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
FAST = ["train.models.0.max_length=64", "train.models.0.epochs=1.0", "train.device=cpu"]


def test_trains_every_fold_and_collects_the_oof(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    args = [f"paths.input={folder}", f"paths.output={tmp_path}", "train.model=tiny-regression", *FAST]
    first = run_cli("02_train", *args, "train.folds=[0, 1]", "train.step=fit")
    assert first.returncode == 0, first.stderr[-3000:]
    model_dir = tmp_path / "train" / "tiny-regression"
    assert sorted(p.name for p in model_dir.iterdir()) == ["fold_0", "fold_1"]
    early = run_cli("02_train", *args, "train.step=collect")  # folds 2 and 3 are missing
    assert early.returncode == 2 and "fold(s) [2, 3]" in early.stderr and "train.folds=[2, 3]" in early.stderr
    assert not (model_dir / "oof.parquet").exists()
    second = run_cli("02_train", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fold 0: already trained with these settings" in second.stderr
    oof = pd.read_parquet(model_dir / "oof.parquet")
    folds = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")
    assert sorted(oof["essay_id"]) == sorted(folds["essay_id"])
    merged = oof.merge(folds, on="essay_id", suffixes=("", "_true"))
    assert (merged["fold"] == merged["fold_true"]).all()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"0", "1", "2", "3"} and -1 <= metrics["qwk_rounded"] <= 1
    log = pd.read_csv(model_dir / "log.csv")
    assert sorted(log["fold"].unique()) == [0, 1, 2, 3] and log["eval_qwk"].notna().any()
    fold_dir = model_dir / "fold_0"
    for name in ("scorer.json", "model.safetensors", "tokenizer.json", "train_config.json", "log.csv"):
        assert (fold_dir / name).exists(), name
    assert not (tmp_path / "checkpoints" / "tiny-regression" / "fold_0" / "checkpoint.pt").exists()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]


def test_missing_backbone(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", *FAST,
                     f"backbone={tmp_path / 'no-such-model'}", "train.model=tiny-regression")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no-such-model" in result.stderr and "local model folder" in result.stderr
    assert not (tmp_path / "train").exists()


def test_fold_not_in_folds_file(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", *FAST, "train.folds=[9]")
    assert result.returncode == 2
    assert "train.folds asks for fold(s) [9], but folds.parquet has [0, 1, 2, 3]" in result.stderr


def test_model_listed_twice(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  models:\n    - name: a\n    - name: a\n")
    result = run_cli("02_train", "--params", str(params))
    assert result.returncode == 2 and "model name(s) ['a'] listed twice" in result.stderr


def test_without_folds_it_says_to_run_prepare(tmp_path):
    result = run_cli("02_train", f"paths.output={tmp_path}")
    assert result.returncode == 2 and "run 00_prepare first" in result.stderr
