"""Soft pseudo-labels: their shape and normalisation, the loss students train with, leak-freedom, resume,
and stages mlm / pseudo_label / students end to end on the demo."""

import json
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.config.model_params import ModelParams, StageParams
from common.core.errors import PipelineError
from common.models import HEADS, LOSSES, tokenization
from common.train.pseudo import (
    PROB_COLUMNS,
    StudentPseudo,
    drop_train_copies,
    load_student_pseudo,
    pseudo_frame,
    soft_labels,
    spread_regression,
)
from common.train.rows import batch_loss, tokenize_train
from common.train.training import Interrupted, train_fold
from tests.conftest import BACKBONE, TINY_TRAIN, fold_table, run_cli

# ------------------------------------------------------------------------------------------------
# Soft labels


def test_regression_predictions_spread_into_distributions_around_them():
    preds = np.array([1.0, 2.4, 3.5, 5.9, 7.0])
    labels = spread_regression(preds, sigma=0.6)
    assert labels.shape == (5, 6) and (labels >= 0).all()
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-12)
    assert labels.argmax(axis=1).tolist() == [0, 1, 2, 5, 5]  # the mode sits at the nearest score
    np.testing.assert_allclose(labels[2, 2], labels[2, 3])  # 3.5 is halfway between 3 and 4
    assert abs(labels[1] @ np.arange(1, 7) - 2.4) < 0.05  # mid-scale: the expectation is the prediction
    narrow = spread_regression(np.array([4.0]), sigma=0.1)
    assert narrow[0, 3] > 0.99
    with pytest.raises(ValueError, match="sigma"):
        spread_regression(preds, 0.0)


def test_class_probabilities_are_renormalised_and_checked():
    probs = np.array([[0.1, 0.2, 0.3, 0.2, 0.1, 0.1], [2, 0, 0, 0, 0, 2]], dtype=float)
    labels = soft_labels(np.zeros(2), probs, sigma=0.6)
    np.testing.assert_allclose(labels.sum(1), 1.0)
    np.testing.assert_allclose(labels[1], [0.5, 0, 0, 0, 0, 0.5])
    with pytest.raises(PipelineError):
        soft_labels(np.zeros(1), np.zeros((1, 6)), 0.6)
    frame = pseudo_frame(["a", "b"], labels, "teacher", 2)
    assert list(frame.columns) == ["essay_id", *PROB_COLUMNS, "expected", "teacher", "teacher_fold"]
    np.testing.assert_allclose(frame["expected"], labels @ np.arange(1, 7))


def test_student_loss_is_the_kl_divergence_to_the_soft_labels_by_hand():
    torch.manual_seed(0)
    head = HEADS.build("classification", 4)
    loss_fn = partial(LOSSES.build("cross_entropy"), head)
    logits = torch.tensor([[0.5, 1.0, -0.5, 0.0, 0.2, -1.0], [0.0, 0.0, 2.0, 1.0, 0.0, 0.0]])
    soft = torch.tensor([[0.1, 0.6, 0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]])
    q = torch.softmax(logits, dim=-1).numpy()
    p = soft.numpy()
    by_hand = np.mean([sum(p[i, c] * np.log(p[i, c] / q[i, c]) for c in range(6) if p[i, c] > 0) for i in range(2)])
    loss = batch_loss(loss_fn, logits, soft, torch.tensor([True, True]), weight=0.5)
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    # Concat mode: a labelled row (one-hot) and a pseudo row, the pseudo one weighted 0.25.
    hard = torch.tensor([[0, 1.0, 0, 0, 0, 0], [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]])
    mixed = batch_loss(loss_fn, logits, hard, torch.tensor([False, True]), weight=0.25)
    ce = -np.log(q[0, 1])
    kl = sum(p[1, c] * np.log(p[1, c] / q[1, c]) for c in (2, 3))
    assert mixed.item() == pytest.approx((ce + 0.25 * kl) / 1.25, rel=1e-5)
    # A regression student: MSE between its prediction and the labels' expected score.
    reg = partial(LOSSES.build("mse"), HEADS.build("regression", 4))
    value = torch.tensor([[2.0], [4.5]])
    assert batch_loss(reg, value, soft, torch.tensor([True, True]), 1.0).item() == pytest.approx(
        np.mean((np.array([2.0, 4.5]) - p @ np.arange(1, 7)) ** 2), rel=1e-5)


def test_copies_of_train_essays_are_found_through_whitespace_and_case():
    train = ["The Cat sat on the mat.\n\nIt was happy.", "Another essay."]
    external = ["the cat sat on the  mat. it was HAPPY.", "A new essay.", "  another  ESSAY."]
    assert drop_train_copies(external, train).tolist() == [False, True, False]


# ------------------------------------------------------------------------------------------------
# Students on the training engine

STUDENT = ModelParams(name="s", max_length=64, stages=[StageParams("pseudo", 1.0), StageParams("all", 1.0)],
                      batch_size=8, effective_batch_size=16, lr=1e-3, head_lr=5e-3, warmup_ratio=0.0,
                      scheduler="linear")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo train essays in 3 folds and external essays with honest soft labels for each fold."""
    frames, table, texts = fold_table(seed=8, n_train=90, n_corpus_only=40)
    corpus = frames["persuade"]
    legit = corpus[drop_train_copies(corpus["full_text"].tolist(), texts)].head(40)
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("pseudo")
    external = pd.DataFrame({"essay_id": legit["essay_id_comp"], "full_text": legit["full_text"],
                             "prompt_name": legit["prompt_name"]})
    for k in range(3):
        labels = soft_labels(rng.uniform(1.5, 5.5, len(external)), None, 0.6)
        pseudo_frame(external["essay_id"], labels, "teacher", k).to_parquet(folder / f"fold_{k}.parquet")
    external.to_parquet(folder / "external.parquet")
    return table, texts, folder


def fit_student(world, pseudo: StudentPseudo, tmp: Path, spec=STUDENT, fold=0, **kwargs):
    table, texts, _ = world
    tokenizer, data = tokenize_train(spec, BACKBONE, table, texts, pseudo)
    return train_fold(spec, BACKBONE, tokenizer, data, fold, tmp / "model", tmp / "ckpt", seed=3, device="cpu",
                      **kwargs)


@pytest.mark.slow
def test_held_out_essays_smuggled_into_the_pseudo_labels_change_nothing(world, tmp_path):
    table, texts, folder = world
    honest = load_student_pseudo(folder, folder / "external.parquet", [0, 1, 2], texts)
    # The leak: every held-out essay of fold 0 again, under new ids, labelled with its true score.
    held = table[table["fold"] == 0]
    leak = pd.DataFrame({"essay_id": [f"leak{i}" for i in range(len(held))],
                         "full_text": [texts[i].upper() + "  " for i in held.index], "prompt_name": "x"})
    leaky_dir = tmp_path / "leaky"
    leaky_dir.mkdir()
    external = pd.concat([pd.read_parquet(folder / "external.parquet"), leak], ignore_index=True)
    external.to_parquet(leaky_dir / "external.parquet")
    for k in range(3):
        one_hot = np.eye(6)[held["score"].to_numpy() - 1]
        extra = pseudo_frame(leak["essay_id"], one_hot, "teacher", k)
        pd.concat([pd.read_parquet(folder / f"fold_{k}.parquet"), extra]).to_parquet(leaky_dir / f"fold_{k}.parquet")
    guarded = load_student_pseudo(leaky_dir, leaky_dir / "external.parquet", [0, 1, 2], texts)
    assert sorted(guarded.essay_ids) == sorted(honest.essay_ids)  # every smuggled copy was dropped
    a = fit_student(world, honest, tmp_path / "honest")
    b = fit_student(world, guarded, tmp_path / "guarded")
    pd.testing.assert_frame_equal(a.oof, b.oof)  # the held-out QWK cannot have been raised by the leak
    assert a.metrics["n_pseudo_rows"] == len(honest.essay_ids)


@pytest.mark.slow
def test_students_read_only_their_own_folds_labels(world, tmp_path, monkeypatch):
    _table, texts, folder = world
    pseudo = load_student_pseudo(folder, folder / "external.parquet", [0, 1, 2], texts)
    seen = []
    real_collator = tokenization.EssayCollator

    class Spy(real_collator):
        def __call__(self, items):
            seen.extend(tuple(np.round(item["target"], 6)) for item in items if isinstance(item.get("target"), list))
            return super().__call__(items)

    monkeypatch.setattr(tokenization, "EssayCollator", Spy)  # what model_collator builds training batches with
    fit_student(world, pseudo, tmp_path / "s", fold=1)
    own = {tuple(np.round(row, 6)) for row in pseudo.labels[1].tolist()}
    others = {tuple(np.round(row, 6)) for k in (0, 2) for row in pseudo.labels[k].tolist()} - own
    soft_seen = {t for t in seen if max(t) < 1.0}  # one-hot rows are the labelled essays
    assert soft_seen and soft_seen <= own and not soft_seen & others


@pytest.mark.slow
def test_a_killed_student_resumes_to_the_same_result(world, tmp_path):
    _table, texts, folder = world
    pseudo = load_student_pseudo(folder, folder / "external.parquet", [0, 1, 2], texts)
    spec = replace(STUDENT, stages=[StageParams("all", 2.0, with_pseudo=True)], pseudo_weight=0.3, checkpoint_every=2)
    whole = fit_student(world, pseudo, tmp_path / "whole", spec)
    with pytest.raises(Interrupted):
        fit_student(world, pseudo, tmp_path / "killed", spec, stop_after_steps=3)
    resumed = fit_student(world, pseudo, tmp_path / "killed", spec)
    np.testing.assert_allclose(resumed.oof["pred"], whole.oof["pred"], rtol=0, atol=1e-6)


def test_bad_pseudo_files_are_refused(world, tmp_path):
    _, texts, folder = world
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    frame = pd.read_parquet(bad / "fold_1.parquet")
    frame.assign(teacher_fold=0).to_parquet(bad / "fold_1.parquet")
    with pytest.raises(PipelineError, match="teacher fold"):
        load_student_pseudo(bad, bad / "external.parquet", [0, 1, 2], texts)
    frame.assign(prob_1=frame["prob_1"] + 0.5).to_parquet(bad / "fold_1.parquet")
    with pytest.raises(PipelineError, match="probability distributions"):
        load_student_pseudo(bad, bad / "external.parquet", [0, 1, 2], texts)
    frame.to_parquet(bad / "fold_1.parquet")
    (bad / "fold_2.parquet").unlink()
    with pytest.raises(PipelineError, match=r"fold_2\.parquet not found: make the student.s pseudo-labels first \(python 01_pseudo_label/run.py train.model=bad\)"):
        load_student_pseudo(bad, bad / "external.parquet", [0, 1, 2], texts)


# ------------------------------------------------------------------------------------------------
# The stages on the demo


STUDENT_FAST = ["train.students.tiny-student.max_length=64", "train.students.tiny-student.stages=[{rows: pseudo, epochs: 1.0}, {rows: all, epochs: 1.0}]",
                "train.students.tiny-student.mlm.max_length=64", "train.students.tiny-student.mlm.epochs=0.5"]


@pytest.mark.slow
def test_mlm_pseudo_label_and_student_stages(trained_output, demo_input, tmp_path):
    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(trained_output, out)
    common = [f"paths.input={folder}", f"paths.output={out}", *TINY_TRAIN, *STUDENT_FAST]
    mlm = run_mlm(common)
    assert mlm.returncode == 0, mlm.stderr[-3000:]
    (adapted,) = (out / "mlm").glob("*/backbone")
    metrics = json.loads((adapted / "mlm_metrics.json").read_text())
    assert metrics["held_out_loss_after"] < metrics["held_out_loss_before"]

    labelled = run_cli("01_pseudo_label", *common)
    assert labelled.returncode == 0, labelled.stderr[-3000:]
    external = pd.read_parquet(out / "prepare" / "external.parquet")
    for k in range(4):
        frame = pd.read_parquet(out / "pseudo" / "tiny-student" / f"fold_{k}.parquet")
        assert set(frame["teacher_fold"]) == {k} and len(frame) == len(external)
        assert set(frame["teacher"]) == {"tiny-regression"}
        np.testing.assert_allclose(frame[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-6)
    report = pd.read_csv(out / "pseudo" / "tiny-student" / "report.csv")
    assert {"prompt_name", "pseudo_mean", "train_mean", "pseudo_3", "train_3"} <= set(report.columns)
    # the plot sits where dvc plots show reads a folder of plots only (no parquet beside it)
    assert (out / "plots" / "pseudo" / "tiny-student" / "distribution.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "pseudo" / "tiny-student" / "plots").exists()

    student = run_cli("02_train", *common, "train.model=tiny-student", "train.folds=[0]")
    assert student.returncode == 0, student.stderr[-3000:]
    assert "MLM-adapted backbone found" in student.stderr  # the MLM run above, not a second one
    fold = out / "train" / "tiny-student" / "folds" / "fold_0"
    assert json.loads((fold / "metrics.json").read_text())["n_pseudo_rows"] == len(external)
    assert json.loads((fold / "train_config.json").read_text())["backbone"] == str(adapted)

    # Every fold kept: no MLM run, even with its cache gone (as after a dvc pull on another machine).
    shutil.rmtree(out / "mlm")
    kept = run_cli("02_train", *common, "train.model=tiny-student", "train.folds=[0]")
    assert kept.returncode == 0 and "fold 0: already trained" in kept.stderr
    assert "MLM domain adaptation" not in kept.stderr and not (out / "mlm").exists()

    # Other MLM settings are another adapted backbone; pseudo-label settings do not touch MLM's.
    assert run_mlm(common).returncode == 0
    assert run_mlm([*common, "pseudo.regression_sigma=0.9"]).returncode == 0
    assert len(list((out / "mlm").glob("*/backbone"))) == 1
    assert run_mlm([*common, "train.students.tiny-student.mlm.epochs=0.25"]).returncode == 0
    assert len(list((out / "mlm").glob("*/backbone"))) == 2


def run_mlm(common):
    return run_cli("01_pseudo_label/mlm.py", *common, "train.model=tiny-student")


@pytest.mark.slow
def test_a_student_without_pseudo_labels_is_told_to_make_them(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", "train.model=tiny-student",
                     "train.students.tiny-student.mlm.epochs=0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "python 01_pseudo_label/run.py train.model=tiny-student" in result.stderr


def labelled_copy(trained_output, demo_input, tmp_path):
    """A copy of `trained_output` whose student's pseudo-labels 01_pseudo_label has made: (its folder, the overrides)."""
    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(trained_output, out)
    common = [f"paths.input={folder}", f"paths.output={out}", *TINY_TRAIN, *STUDENT_FAST,
              "train.students.tiny-student.mlm.epochs=0"]
    labelled = run_cli("01_pseudo_label", *common)
    assert labelled.returncode == 0, labelled.stderr[-3000:]
    return out, common


@pytest.mark.slow
def test_labels_of_a_teacher_or_of_pseudo_labels_on_other_folds_are_refused(trained_output, demo_input, tmp_path):
    """Fold k's labels are leak-free only if the teacher's fold k held out today's fold k."""
    out, common = labelled_copy(trained_output, demo_input, tmp_path)
    folds_path = out / "prepare" / "folds.parquet"
    folds = pd.read_parquet(folds_path)
    folds.assign(fold=(folds["fold"] + 1) % 4).to_parquet(folds_path, index=False)  # 00_prepare "ran again"
    stale_teacher = run_cli("01_pseudo_label", *common)
    assert stale_teacher.returncode == 2 and "Traceback" not in stale_teacher.stderr
    assert "fold(s) [0, 1, 2, 3] trained on other folds" in stale_teacher.stderr
    student = run_cli("02_train", *common, "train.model=tiny-student", "train.folds=[0]")
    assert student.returncode == 2 and "Traceback" not in student.stderr
    assert "they were made on other folds" in student.stderr
    assert "python 01_pseudo_label/run.py train.model=tiny-student" in student.stderr


@pytest.mark.slow
def test_labels_whose_teacher_folds_changed_since_are_refused_by_hand(trained_output, demo_input, tmp_path):
    """A teacher retrained by hand after its labels were made (a first-round student, for the second round): the
    labels record the fingerprints of the teacher folds that made them, and the student refuses them."""
    out, common = labelled_copy(trained_output, demo_input, tmp_path)
    made = json.loads((out / "pseudo" / "tiny-student" / "metrics.json").read_text())
    teacher_folds = out / "train" / "tiny-regression" / "folds"
    assert made["teacher_fingerprints"] == {
        unit.name: json.loads((unit / "train_config.json").read_text())["fingerprint"]
        for unit in sorted(teacher_folds.iterdir()) if unit.name.startswith("fold_")}
    config_file = teacher_folds / "fold_2_seed7" / "train_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "fingerprint": "retrained-with-other-settings"}))
    student = run_cli("02_train", *common, "train.model=tiny-student", "train.folds=[0]")
    assert student.returncode == 2 and "Traceback" not in student.stderr
    assert "teacher 'tiny-regression' changed since they were made: fold_2_seed7 trained again" in student.stderr
    assert "python 01_pseudo_label/run.py train.model=tiny-student" in student.stderr
    assert not (out / "train" / "tiny-student").exists()
