"""Experiment tracking: the dvclive step logger, the trackers beside it, training curves and headline metrics."""

import json
import sys
import types

import pandas as pd
import pytest

from common.core.tracking import StepLogger, TrackingError, rounded, training_curves, write_headline

ROWS = [{"step": 1, "train_loss": 1.25, "lr": 1e-5, "grad_norm": 3.0, "eval_qwk": None},
        {"step": 2, "train_loss": 1.0, "lr": 2e-5, "grad_norm": 2.5, "eval_qwk": 0.61234567, "stage": 1},
        {"step": 3, "train_loss": 0.75, "lr": 3e-5, "grad_norm": 2.0, "layer_grad_norm/head": 0.5}]


def _log(folder, rows, **kwargs):
    logger = StepLogger(folder, "model/fold_0", **kwargs)
    for row in rows:
        logger.log(row)
    logger.close()


def test_step_logger_writes_one_dvclive_series_per_metric(tmp_path):
    _log(tmp_path / "live", ROWS)
    metrics = tmp_path / "live" / "plots" / "metrics"
    loss = pd.read_csv(metrics / "train_loss.tsv", sep="\t")
    assert loss["step"].tolist() == [1, 2, 3] and loss["train_loss"].tolist() == [1.25, 1.0, 0.75]
    qwk = pd.read_csv(metrics / "eval_qwk.tsv", sep="\t")
    assert qwk["step"].tolist() == [2]  # None is not logged
    assert pd.read_csv(metrics / "layer_grad_norm" / "head.tsv", sep="\t")["step"].tolist() == [3]
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["step"] == 3 and summary["train_loss"] == 0.75


def test_a_replayed_run_writes_what_an_uninterrupted_one_does(tmp_path):
    _log(tmp_path / "whole", ROWS)
    _log(tmp_path / "killed", [*ROWS[:2], {"step": 3, "train_loss": 9.0}])  # steps past the last checkpoint
    resumed = StepLogger(tmp_path / "killed", "model/fold_0")  # starts over: the checkpoint's rows come back
    resumed.replay(ROWS)
    resumed.close()
    for name in ("train_loss.tsv", "eval_qwk.tsv", "layer_grad_norm/head.tsv"):
        assert (tmp_path / "killed" / "plots" / "metrics" / name).read_text() == \
            (tmp_path / "whole" / "plots" / "metrics" / name).read_text()


def test_a_tracker_gets_the_same_rows(tmp_path, monkeypatch):
    seen, finished = [], []

    class Run:
        def log(self, values, step):
            seen.append((step, values))

        def finish(self):
            finished.append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda name, config, reinit: Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _log(tmp_path / "live", ROWS, trackers=["wandb"], config={"lr": 1e-5})
    assert [step for step, _ in seen] == [1, 2, 3] and seen[1][1]["eval_qwk"] == pytest.approx(0.61234567)
    assert "stage" in seen[1][1] and finished == [True]


def test_a_missing_tracker_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(TrackingError, match="pip install mlflow"):
        StepLogger(tmp_path / "live", "model/fold_0", trackers=["mlflow"])


def test_training_curves_hold_one_line_per_unit(tmp_path):
    _log(tmp_path / "fold_0", ROWS)
    _log(tmp_path / "fold_1", [{**row, "train_loss": row["train_loss"] / 2} for row in ROWS])
    stale = tmp_path / "curves" / "tokens_per_second.tsv"
    stale.parent.mkdir()
    stale.write_text("step\tunit\ttokens_per_second\n1\tfold_9\t1.0\n")
    written = training_curves({"fold_0": tmp_path / "fold_0", "fold_1": tmp_path / "fold_1",
                               "full": tmp_path / "absent"}, tmp_path / "curves")
    assert {p.name for p in written} == {"train_loss.tsv", "lr.tsv", "grad_norm.tsv", "eval_qwk.tsv"}
    loss = pd.read_csv(tmp_path / "curves" / "train_loss.tsv", sep="\t")
    assert list(loss.columns) == ["step", "unit", "train_loss"]
    assert loss.groupby("unit")["train_loss"].sum().to_dict() == {"fold_0": 3.0, "fold_1": 1.5}
    assert not stale.exists()  # no unit logged it any more


def test_headline_figures_are_rounded_to_4_decimals(tmp_path):
    write_headline(tmp_path / "m" / "ensemble.json", {"qwk": 0.7361563517915309, "n": 360, "selected": "stacker",
                                                      "methods": {"mean": {"qwk": 0.12345678}}, "none": None})
    assert json.loads((tmp_path / "m" / "ensemble.json").read_text()) == {
        "qwk": 0.7362, "n": 360, "selected": "stacker", "methods": {"mean": {"qwk": 0.1235}}, "none": None}
    assert rounded([float("nan"), 1.23456])[1] == 1.2346


def test_outside_a_dvc_repository_no_dvclive_and_no_dvc_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a DVC repository: dvclive would `dvc init` an enclosing git repository
    _log(tmp_path / "live", ROWS)
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / "live" / "plots").exists()


def test_a_hand_run_elsewhere_keeps_its_headlines_beside_its_outputs():
    from common.config.params import Params
    from common.config.stage import keep_headlines_with_the_run

    moved = Params()
    moved.paths.output = "/scratch/run"  # as parse_cli leaves it
    keep_headlines_with_the_run(moved, ["train.model=m", "paths.output=/scratch/run"])
    assert moved.paths.metrics == "/scratch/run/exp_metrics"
    chosen = Params()
    keep_headlines_with_the_run(chosen, ["paths.output=/scratch/run", "paths.metrics=mine"])
    plain = Params()
    keep_headlines_with_the_run(plain, ["train.model=m"])  # dvc repro: params.yaml says where
    assert chosen.paths.metrics == "metrics" and plain.paths.metrics == "metrics"
