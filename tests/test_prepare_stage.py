"""Stage 00_prepare end to end on demo data: the real CLI, its outputs, bad input, crash safety."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from common.config.stage import run_stage
from common.tools.demo import DEMO_FILES
from tests.conftest import run_cli, run_cli_process

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(demo_input):
    return demo_input


@pytest.fixture(scope="module")
def prepared(prepared_output):
    return prepared_output / "prepare"


def test_outputs_follow_the_contract(prepared):
    folds = pd.read_parquet(prepared / "folds.parquet")
    assert list(folds.columns)[:6] == ["essay_id", "score", "fold", "prompt_cluster", "prompt_name", "origin"]
    assert folds["essay_id"].is_unique and len(folds) == 200
    assert set(folds["fold"]) == {0, 1, 2, 3}
    assert set(folds["origin"]) == {"persuade", "other"}
    external = pd.read_parquet(prepared / "external.parquet")
    assert {"essay_id", "full_text", "prompt_name"} <= set(external.columns)
    test_prompts = pd.read_parquet(prepared / "test_prompts.parquet")
    assert len(test_prompts) == 30
    metrics = json.loads((prepared / "metrics.json").read_text())
    assert metrics["n_train"] == 200 and metrics["folds"]["duplicate_groups_split"] == 0
    for plot in ("score_by_fold.png", "score_by_prompt.png"):
        assert (prepared / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in prepared.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_origin_prompts_and_duplicates_match_the_truth(prepared, demo):
    _, truth = demo
    folds = pd.read_parquet(prepared / "folds.parquet").merge(truth, on="essay_id", suffixes=("", "_true"))
    assert (folds["origin"] == folds["origin_true"]).mean() == 1.0
    assert (folds["prompt_name"] == folds["prompt_name_true"]).mean() >= 0.98
    test_prompts = pd.read_parquet(prepared / "test_prompts.parquet").merge(truth, on="essay_id")
    assert adjusted_rand_score(test_prompts["prompt_name_x"], test_prompts["prompt_name_y"]) >= 0.95
    # Every duplicate (exact or near) shares its source's duplicate group and fold.
    by_id = folds.set_index("essay_id")
    dups = folds[folds["duplicate_of"] != ""]
    assert len(dups) >= 4
    for _, row in dups.iterrows():
        assert by_id.at[row["duplicate_of"], "duplicate_group"] == row["duplicate_group"]
        assert by_id.at[row["duplicate_of"], "fold"] == row["fold"]


def test_external_excludes_train_essays_and_duplicates(prepared, demo):
    folder, truth = demo
    external = pd.read_parquet(prepared / "external.parquet")
    corpus = pd.read_csv(folder / DEMO_FILES["persuade"])
    assert not set(external["essay_id"]) & set(truth["essay_id_comp"])
    n_train_matched = truth.loc[truth["essay_id_comp"] != "", "essay_id_comp"].nunique()
    # Every corpus essay that is not a copy of a train essay is kept, but for its own near duplicates.
    assert len(corpus) - n_train_matched - 5 <= len(external) < len(corpus) - n_train_matched


def test_same_params_same_folds(prepared, demo, tmp_path):
    folder, _ = demo
    result = run_cli("00_prepare", f"paths.input={folder}", f"paths.output={tmp_path}")
    assert result.returncode == 0, result.stderr
    first = pd.read_parquet(prepared / "folds.parquet")
    second = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")
    pd.testing.assert_frame_equal(first, second)


def test_group_by_prompt_holds_out_prompts(demo, tmp_path):
    folder, _ = demo
    result = run_cli(
        "00_prepare", f"paths.input={folder}", f"paths.output={tmp_path}", "prepare.group_by=prompt"
    )
    assert result.returncode == 0, result.stderr
    folds = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")
    assert (folds.groupby("prompt_cluster")["fold"].nunique() == 1).all()


def test_bad_input_exits_with_the_problem_and_writes_nothing(demo, tmp_path):
    folder, _ = demo
    bad = tmp_path / "input"
    shutil.copytree(folder, bad)
    train = pd.read_csv(bad / "train.csv")
    train.loc[7, "score"] = 9
    train.to_csv(bad / "train.csv", index=False)
    out = tmp_path / "out"
    result = run_cli("00_prepare", f"paths.input={bad}", f"paths.output={out}")
    assert result.returncode == 2
    assert "train.csv: score outside 1-6 at row 8" in result.stderr and "Fix" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "prepare").exists()


def test_unknown_override_exits_with_the_allowed_keys(tmp_path):
    result = run_cli("00_prepare", "prepare.folds=3", f"paths.output={tmp_path}")
    assert result.returncode == 2
    assert "unknown key 'prepare.folds'" in result.stderr and "n_folds" in result.stderr


def test_crash_mid_stage_leaves_previous_output(prepared, demo, tmp_path, monkeypatch):
    folder, _ = demo
    shutil.copytree(prepared, tmp_path / "prepare")
    before = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")

    sys.path.insert(0, str(REPO / "00_prepare"))
    try:
        import run as prepare_run
    finally:
        sys.path.pop(0)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full while plotting")

    from common.prepare import prepare_stage

    monkeypatch.setattr(prepare_stage, "plot_score_distribution", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        run_stage(prepare_run.main, "", [f"paths.input={folder}", f"paths.output={tmp_path}", "seed=5"])
    after = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")
    pd.testing.assert_frame_equal(before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare"]


def test_cluster_counts_are_reported(prepared):
    metrics = json.loads((prepared / "metrics.json").read_text())
    clusters = metrics["clusters"]
    assert clusters["n_clusters"] == 7 and clusters["chosen_automatically"] is True
    assert clusters["ari"] >= 0.95 and clusters["purity"] >= 0.98
    assert sum(clusters["train_sizes"].values()) == 200
    assert np.isclose(metrics["origin"]["persuade"] / 200, 0.75, atol=0.03)


@pytest.mark.parametrize("stage", ["00_prepare", "02_train", "04_ensemble", "05_infer"])
def test_an_unwritable_output_folder_fails_at_start(demo, tmp_path, stage):
    folder, _ = demo
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli_process(stage, f"paths.input={folder}", f"paths.output={blocker / 'out'}")  # each stage's CLI
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"paths.output={blocker / 'out'} is not writable" in result.stderr and "Fix:" in result.stderr
    assert "INFO" not in result.stderr  # nothing ran before the check


def test_an_unwritable_metrics_folder_fails_at_start(demo, tmp_path):
    folder, _ = demo
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("00_prepare", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}",
                     f"paths.metrics={blocker / 'metrics'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"paths.metrics={blocker / 'metrics'} is not writable" in result.stderr and "Fix: set paths.metrics" in result.stderr
    assert not (tmp_path / "out" / "prepare").exists()  # nothing ran before the check


def test_data_that_cannot_fill_the_folds_fails_before_matching(demo, tmp_path):
    folder, _ = demo
    data = tmp_path / "input"
    shutil.copytree(folder, data)
    train = pd.read_csv(data / "train.csv")
    train.groupby("score").head(1).to_csv(data / "train.csv", index=False)  # one essay per score
    result = run_cli("00_prepare", f"paths.input={data}", f"paths.output={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no score has 4 essays" in result.stderr and "use a train file with more essays" in result.stderr
    assert "prompt clusters" not in result.stderr  # refused before matching and clustering
    too_many = run_cli("00_prepare", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}", "prepare.n_folds=1000")
    assert too_many.returncode == 2 and "use prepare.n_folds <= " in too_many.stderr
    assert not (tmp_path / "out" / "prepare").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("prepare.n_folds=1", "'prepare.n_folds' = 1 is out of range: allowed [2, inf)"),
    ("prepare.n_folds=0", "'prepare.n_folds' = 0 is out of range"),
    ("prepare.n_folds=-3", "'prepare.n_folds' = -3 is out of range"),
    ("prepare.near_duplicate_threshold=1.5", "'prepare.near_duplicate_threshold' = 1.5 is out of range: allowed (0, 1]"),
    ("prepare.max_clusters=1", "'prepare.max_clusters' = 1 is out of range: allowed [2, inf)"),
    ("ensemble.prompt_mix={x: -1.0}", "shares must be >= 0 with a positive sum"),
])
def test_out_of_range_params_exit_2_at_load(demo, tmp_path, override, message):
    folder, _ = demo
    result = run_cli("00_prepare", f"paths.input={folder}", f"paths.output={tmp_path}", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and "INFO" not in result.stderr
