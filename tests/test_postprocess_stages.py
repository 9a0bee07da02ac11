"""Stages 03_oof_thresholds and 04_ensemble end to end on demo folds with synthetic OOF files."""

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from common.ensemble.stacker import LGBMStacker
from common.prepare.text_features import TextFeaturizer
from tests.conftest import built_once, run_cli

pytestmark = pytest.mark.slow
FAST = "ensemble.n_trials=2"
MODELS = "ensemble.models=[model_a, model_b, noise]"


def write_oof(out: Path, name: str, noise: float, seed: int, probs: bool = False) -> pd.DataFrame:
    folds = pd.read_parquet(out / "prepare" / "folds.parquet")
    rng = np.random.default_rng(seed)
    pred = folds["score"].to_numpy() + rng.normal(0, noise, len(folds))
    oof = pd.DataFrame({"essay_id": folds["essay_id"], "fold": folds["fold"], "pred": pred})
    if probs:
        logits = -((np.arange(1, 7)[None, :] - pred[:, None]) ** 2)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for k in range(6):
            oof[f"prob_{k + 1}"] = p[:, k]
    (out / "train" / name).mkdir(parents=True, exist_ok=True)
    oof.sample(frac=1.0, random_state=seed).to_parquet(out / "train" / name / "oof.parquet", index=False)
    return oof


@pytest.fixture(scope="module")
def run_dir(prepared_output, demo_input, tmp_path_factory):
    folder, _ = demo_input

    def build(out: Path) -> None:
        shutil.copytree(prepared_output / "prepare", out / "prepare")
        write_oof(out, "model_a", 0.6, 1)
        write_oof(out, "model_b", 0.8, 2, probs=True)
        write_oof(out, "noise", 3.0, 3)
        for stage in ("03_oof_thresholds", "04_ensemble"):
            result = run_cli(stage, f"paths.input={folder}", f"paths.output={out}", FAST, MODELS)
            assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "post", build)


def test_thresholds_report_every_model(run_dir):
    for name in ("model_a", "model_b", "noise"):
        report = json.loads((run_dir / "thresholds" / f"{name}.json").read_text())
        for key in ("qwk_rounded", "qwk_insample", "qwk_nested", "qwk_rounded_other", "qwk_nested_other"):
            assert -1.0 <= report[key] <= 1.0
        assert np.all(np.diff(report["thresholds"]) > 0) and len(report["thresholds"]) == 5
        assert set(report["per_fold"]) == {"0", "1", "2", "3"}
        assert {"persuade", "other"} == set(report["per_group"]["origin"])
        assert len(report["per_group"]["prompt_name"]) == 7
        assert report["qwk_insample"] >= report["qwk_nested"] - 1e-9
        for key in ("qwk_nested", "qwk_nested_other"):
            assert report[f"{key}_low"] < report[key] < report[f"{key}_high"]
        # other-origin rows are a quarter of the rows: their interval is wider
        assert (report["qwk_nested_other_high"] - report["qwk_nested_other_low"]
                > report["qwk_nested_high"] - report["qwk_nested_low"])
        for plot in (f"{name}_confusion.png", f"{name}_pred_vs_true.png"):
            assert (run_dir / "thresholds" / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run_dir / "metrics" / "thresholds.json").read_text())
    assert summary["model_a"]["qwk_nested"] > summary["noise"]["qwk_nested"]


def test_ensemble_metrics_and_selection(run_dir):
    metrics = json.loads((run_dir / "ensemble" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"mean", "greedy", "scipy", "per_prompt", "stacker"}  # prompt features on
    for figures in metrics["methods"].values():
        assert 0.0 < figures["qwk_nested"] <= 1.0 and 0.0 < figures["qwk_nested_other"] <= 1.0
    assert metrics["target"] == "auto" and metrics["select_on"] == "other" and metrics["by_origin"] is True
    intervals = {r["name"]: r for r in metrics["intervals"]["rows"]}
    assert set(intervals) == set(metrics["methods"]) | {"model:model_a", "model:model_b", "model:noise"}
    best = max(metrics["methods"], key=lambda k: metrics["methods"][k]["qwk_nested_other"])
    assert metrics["selected"] == best or intervals[best]["diff_low"] <= 0  # a simpler one kept within the interval
    assert metrics["models"] == ["model_a", "model_b", "noise"]
    frontier = pd.read_csv(run_dir / "ensemble" / "frontier.csv", dtype={"target_weight": str})
    assert len(frontier) == 5 * 6 and set(frontier["target_weight"]) == {"1", "2", "4", "8", "16", "chosen"}
    assert len(pd.read_csv(run_dir / "ensemble" / "intervals.csv")) == 8
    for plot in ("frontier.png", "intervals.png", "confusion.png"):
        assert (run_dir / "ensemble" / "plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_artifacts_load_without_training_code(run_dir, demo_input):
    art = run_dir / "ensemble" / "artifacts"
    spec = json.loads((art / "ensemble.json").read_text())
    assert spec["methods"]["greedy"]["weights"]["noise"] < spec["methods"]["greedy"]["weights"]["model_a"]
    assert np.all(np.diff(spec["thresholds"]) > 0)
    # The stacker is plain LightGBM text files + JSON: load the boosters directly and compare.
    meta = json.loads((art / "stacker" / "stacker.json").read_text())
    stacker = LGBMStacker.load(art)
    assert stacker.feature_names_ == spec["feature_columns"]
    folds = pd.read_parquet(run_dir / "prepare" / "folds.parquet")
    x = np.random.default_rng(0).normal(3, 1, size=(5, len(spec["feature_columns"])))
    raw = np.mean([lgb.Booster(model_file=str(art / "stacker" / f)).predict(x) + meta["base_scores"][k]
                   for k, f in meta["model_files"].items()], axis=0)
    np.testing.assert_allclose(stacker.predict(x), raw)
    vocabulary = json.loads((art / "text_vocabulary.json").read_text())
    featurizer = TextFeaturizer.from_vocabulary(vocabulary)
    folder, _ = demo_input
    texts = pd.read_csv(folder / "train.csv")["full_text"].head(3).tolist()
    assert featurizer.transform(texts).shape == (3, len([c for c in spec["feature_columns"] if c.startswith("text__")]))
    assert len(folds) == 200


def test_models_can_be_chosen_and_text_features_turned_off(run_dir, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(run_dir / "prepare", tmp_path / "prepare")
    shutil.copytree(run_dir / "train", tmp_path / "train")
    result = run_cli("04_ensemble", f"paths.input={folder}", f"paths.output={tmp_path}", FAST,
                     "ensemble.models=[model_a, model_b]", "ensemble.text_features=false", "ensemble.target=all")
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "ensemble" / "artifacts" / "ensemble.json").read_text())
    assert spec["models"] == ["model_a", "model_b"] and spec["text_features"] is False
    assert not [c for c in spec["feature_columns"] if c.startswith("text__")]
    assert not (tmp_path / "ensemble" / "artifacts" / "text_vocabulary.json").exists()
    metrics = json.loads((tmp_path / "ensemble" / "metrics.json").read_text())
    assert metrics["select_on"] == "all" and metrics["target_weight"] == "1"


@pytest.fixture
def bad_dir(run_dir, tmp_path):
    shutil.copytree(run_dir / "prepare", tmp_path / "prepare")
    write_oof(tmp_path, "model_a", 0.6, 1)
    return tmp_path


def expect_failure(out: Path, demo_input, *overrides: str) -> str:
    folder, _ = demo_input
    stderr = ""
    if not any(o.startswith("ensemble.models=") for o in overrides):
        overrides = ("ensemble.models=[model_a]", *overrides)
    for stage in ("03_oof_thresholds", "04_ensemble"):
        result = run_cli(stage, f"paths.input={folder}", f"paths.output={out}", FAST, *overrides)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        stderr += result.stderr
    assert not (out / "thresholds").exists() and not (out / "ensemble").exists()
    return stderr


def test_oof_ids_that_differ_from_the_folds(bad_dir, demo_input):
    oof = pd.read_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    oof.iloc[:-3].to_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    msg = expect_failure(bad_dir, demo_input)
    assert "model_a/oof.parquet: essay ids differ from folds.parquet (3 missing" in msg


def test_nan_predictions(bad_dir, demo_input):
    oof = pd.read_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    oof.loc[[4, 9], "pred"] = np.nan
    oof.to_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    msg = expect_failure(bad_dir, demo_input)
    assert "model_a/oof.parquet: 2 NaN or infinite prediction(s)" in msg


def test_model_with_a_single_fold(bad_dir, demo_input):
    oof = pd.read_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    oof[oof["fold"] == 1].to_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    msg = expect_failure(bad_dir, demo_input)
    assert "model_a/oof.parquet: covers fold(s) [1] of 4" in msg


def test_predictions_in_the_wrong_fold(bad_dir, demo_input):
    oof = pd.read_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    oof["fold"] = (oof["fold"] + 1) % 4
    oof.to_parquet(bad_dir / "train" / "model_a" / "oof.parquet")
    msg = expect_failure(bad_dir, demo_input)
    assert "predicted in a different fold than folds.parquet says" in msg


def test_model_listed_twice(bad_dir, demo_input):
    msg = expect_failure(bad_dir, demo_input, "ensemble.models=[model_a, model_a]")
    assert "model(s) ['model_a'] listed twice in ensemble.models" in msg


def test_model_without_oof(bad_dir, demo_input):
    msg = expect_failure(bad_dir, demo_input, "ensemble.models=[model_a, missing]")
    assert "no oof.parquet for model(s) ['missing']" in msg and "['model_a']" in msg


def test_model_folders_of_another_run_are_not_read(bad_dir, demo_input):
    """By default 03 and 04 read the models params names, not every folder under output/train/."""
    stale = write_oof(bad_dir, "demo-leftover", 0.6, 4)
    stale.iloc[:-5].to_parquet(bad_dir / "train" / "demo-leftover" / "oof.parquet")  # made on other essays
    folder, _ = demo_input
    only_a = ["train.models={model_a: {}}", "train.students={}"]
    for stage in ("03_oof_thresholds", "04_ensemble"):
        result = run_cli(stage, f"paths.input={folder}", f"paths.output={bad_dir}", FAST, *only_a)
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (bad_dir / "thresholds").glob("*.json")) == ["model_a.json"]
    assert json.loads((bad_dir / "ensemble" / "metrics.json").read_text())["models"] == ["model_a"]


def test_an_unknown_prompt_in_the_mix_fails_before_fitting(bad_dir, demo_input):
    folder, _ = demo_input
    result = run_cli("04_ensemble", f"paths.input={folder}", f"paths.output={bad_dir}", FAST,
                     "ensemble.models=[model_a]", "ensemble.prompt_mix={x: 1.0}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ensemble.prompt_mix names prompt(s) ['x'] that folds.parquet does not have" in result.stderr
    assert "Driverless cars" in result.stderr and not (bad_dir / "ensemble").exists()
