"""The training engine on the tiny backbone: heads, fold discipline, resume, determinism, faults."""

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from common.config.model_params import ModelParams, ScorerParams, StageParams
from common.train import fingerprints, fold_run, rows, training
from common.train.rows import tokenize_train
from common.train.training import Interrupted, TrainingError, train_fold
from tests.conftest import BACKBONE, REPO, fold_table

pytestmark = pytest.mark.slow

BASE = ModelParams(
    name="t", max_length=64, stages=[StageParams(epochs=1.0)], batch_size=8, effective_batch_size=16, lr=1e-3, head_lr=5e-3,
    warmup_ratio=0.0, scheduler="linear", scorer=ScorerParams(dropout=0.1),
)


@pytest.fixture(scope="module")
def frame():
    _, table, texts = fold_table(seed=5, n_train=96, n_corpus_only=20)
    return table, texts


def fit(frame, spec=BASE, fold=0, tmp=None, **kwargs):
    table, texts = frame
    tokenizer, data = tokenize_train(spec, BACKBONE, table, texts)
    return train_fold(spec, BACKBONE, tokenizer, data, fold, tmp / "model", tmp / "ckpt", seed=3, device="cpu",
                      **kwargs)


@pytest.mark.parametrize("head", ["regression", "classification", "ordinal"])
def test_each_head_trains_and_predicts_the_held_out_fold(frame, tmp_path, head):
    table, _ = frame
    result = fit(frame, replace(BASE, scorer=ScorerParams(head=head)), tmp=tmp_path)
    held = table[table["fold"] == 0]
    assert sorted(result.oof["essay_id"]) == sorted(held["essay_id"])
    pred = result.oof["pred"].to_numpy()
    assert (result.oof["fold"] == 0).all() and np.isfinite(pred).all() and pred.std() > 0
    prob_cols = [c for c in result.oof.columns if c.startswith("prob_")]
    if head == "regression":
        assert prob_cols == []
    else:
        assert len(prob_cols) == 6
        probs = result.oof[prob_cols].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(pred, probs @ np.arange(1, 7), atol=1e-5)  # the expected score under them
    assert np.isfinite(result.log["train_loss"]).all() and "eval_qwk" in result.log
    assert (tmp_path / "model" / "train_config.json").exists()
    assert json.loads((tmp_path / "model" / "tokenizer.json").read_text())["truncation"] is None  # no call's state


@pytest.fixture
def batched_rows(monkeypatch) -> list[int]:
    """Every row index of every training batch the engine draws (filled as training runs)."""
    seen: list[int] = []
    original = training.epoch_batches

    def spy(*args, **kwargs):
        batches = original(*args, **kwargs)
        seen.extend(i for b in batches for i in b)
        return batches

    monkeypatch.setattr(training, "epoch_batches", spy)
    return seen


def test_no_held_out_essay_is_ever_in_a_training_batch(frame, tmp_path, batched_rows):
    table, _ = frame
    seen = batched_rows
    spec = replace(BASE, stages=[StageParams("persuade", 1.0), StageParams("all", 1.0)])
    fit(frame, spec, fold=1, tmp=tmp_path)
    held = set(np.flatnonzero(table["fold"].to_numpy() == 1).tolist())
    assert seen and not held & set(seen)
    assert set(seen) == set(range(len(table))) - held  # every training row was used


def test_the_full_fit_trains_on_every_row_and_stops_where_cv_stopped(frame, tmp_path, batched_rows):
    table, _ = frame
    seen = batched_rows
    result = fit(frame, fold=None, tmp=tmp_path, stop_fraction=0.5)
    assert set(seen) == set(range(len(table)))  # nothing held out
    per_epoch = math.ceil(len(table) / BASE.batch_size)
    assert result.metrics["steps"] == round(per_epoch / 2 * 0.5)  # half the schedule's optimizer steps
    assert result.oof.empty and result.metrics["qwk_rounded"] is None and "eval_qwk" not in result.log
    config = json.loads((tmp_path / "model" / "train_config.json").read_text())
    assert config["fold"] is None and "seeds" not in config["model"]


def test_two_stages_train_on_the_chosen_rows(frame, tmp_path, monkeypatch):
    table, _ = frame
    calls = []
    original = rows.stage_rows
    monkeypatch.setattr(fold_run, "stage_rows", lambda d, f, stage: calls.append(stage.rows) or original(d, f, stage))
    spec = replace(BASE, stages=[StageParams("persuade", 1.0), StageParams("other", 1.0)])
    result = fit(frame, spec, tmp=tmp_path)
    assert calls == ["persuade", "other"]
    assert sorted(result.log["stage"].unique()) == [1, 2]
    other_train = ((table["fold"] != 0) & (table["origin"] == "other")).to_numpy()
    assert rows.stage_rows(rows.TrainData(
        table["essay_id"].to_numpy(), [], table["score"].to_numpy(), table["fold"].to_numpy(),
        table["origin"].to_numpy()), 0, StageParams("other")).tolist() == np.flatnonzero(other_train).tolist()


@pytest.fixture(scope="module")
def plain(frame, tmp_path_factory):
    """BASE trained on fold 0."""
    return fit(frame, tmp=tmp_path_factory.mktemp("plain"))


def test_same_seed_same_predictions(frame, plain, tmp_path):
    again = fit(frame, tmp=tmp_path / "again")
    pd.testing.assert_frame_equal(plain.oof, again.oof)


def test_a_killed_run_resumes_to_the_same_result(frame, tmp_path):
    spec = replace(BASE, stages=[StageParams(epochs=2.0)], checkpoint_every=2, eval_every=2, ema_decay=0.9)
    whole = fit(frame, spec, tmp=tmp_path / "whole")
    with pytest.raises(Interrupted):
        fit(frame, spec, tmp=tmp_path / "killed", stop_after_steps=5)
    assert (tmp_path / "killed" / "ckpt" / fold_run.CHECKPOINT_FILE).exists()
    resumed = fit(frame, spec, tmp=tmp_path / "killed")
    np.testing.assert_allclose(resumed.oof["pred"], whole.oof["pred"], rtol=0, atol=1e-6)
    assert resumed.log["step"].tolist() == whole.log["step"].tolist()
    assert not (tmp_path / "killed" / "ckpt" / fold_run.CHECKPOINT_FILE).exists()  # removed once done


class _Payload:
    """Unpickling this runs code: what a checkpoint.pt from an untrusted output folder could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_is_loaded_as_tensors_only(frame, tmp_path):
    import json

    import torch

    spec = replace(BASE, stages=[StageParams(epochs=2.0)], checkpoint_every=2)
    with pytest.raises(Interrupted):
        fit(frame, spec, tmp=tmp_path, stop_after_steps=3)
    ckpt = tmp_path / "ckpt" / fold_run.CHECKPOINT_FILE
    fingerprint = json.loads(ckpt.with_suffix(".json").read_text())["fingerprint"]
    assert torch.load(ckpt, weights_only=True)["fingerprint"] == fingerprint  # plain tensors and values only
    marker = tmp_path / "code-ran"
    torch.save({"fingerprint": fingerprint, "state": _Payload(marker)}, ckpt)
    with pytest.raises(TrainingError, match=r"cannot be loaded safely.*Delete it"):
        fit(frame, spec, tmp=tmp_path)
    assert not marker.exists()
    ckpt.with_suffix(".json").write_text(json.dumps({"fingerprint": "other settings"}))
    result = fit(frame, spec, tmp=tmp_path)  # another fingerprint: never unpickled, the fold trains afresh
    assert not marker.exists() and np.isfinite(result.oof["pred"]).all()


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(frame, tmp_path, monkeypatch):
    from common.models.parts import losses

    calls = {"n": 0}
    original = losses.MeanSquaredError.compute

    def flaky(self, head, logits, target):
        calls["n"] += 1
        loss = original(self, head, logits, target)
        return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(losses.MeanSquaredError, "compute", flaky)
    spec = replace(BASE, stages=[StageParams(epochs=2.0)], checkpoint_every=1)
    with pytest.raises(TrainingError, match=r"loss is nan at stage 1, step \d+.*fp16 overflow.*last good checkpoint"):
        fit(frame, spec, tmp=tmp_path)
    assert (tmp_path / "ckpt" / fold_run.CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("setting", [{"awp_lr": 0.5, "awp_start_epoch": 0.0}, {"ema_decay": 0.5},
                                     {"scorer": ScorerParams(n_dropout_samples=3)}, {"token_cutout": 0.2},
                                     {"swa_start": 0.5}, {"random_crop": 0.5}, {"max_length_schedule": [16]}],
                         ids=["awp", "ema", "multi-sample dropout", "token cutout", "swa", "random crop",
                              "progressive max_length"])
def test_awp_ema_and_multi_sample_dropout_change_the_model(frame, plain, tmp_path, setting):
    changed = fit(frame, replace(BASE, **setting), tmp=tmp_path / "changed")
    assert np.isfinite(changed.oof["pred"]).all()
    assert not np.allclose(plain.oof["pred"], changed.oof["pred"], rtol=0, atol=1e-6)
    if "swa_start" in setting:  # 4 steps (64 training essays, 16 a step): the weights after steps 3 and 4
        assert changed.metrics["steps"] == 4 and changed.metrics["swa_models"] == 2


def test_awp_keep_best_and_ema_run(frame, tmp_path):
    spec = replace(BASE, stages=[StageParams(epochs=2.0)], awp_lr=0.5, awp_start_epoch=0.5, keep_best=True, eval_every=1, ema_decay=0.5,
                   scorer=ScorerParams(head="classification", pooling="attention", n_dropout_samples=3))
    result = fit(frame, spec, tmp=tmp_path)
    assert result.metrics["best_step"] in result.log["step"].tolist()
    assert np.isfinite(result.oof["pred"]).all()


def test_effective_batch_size_must_divide(frame, tmp_path):
    with pytest.raises(TrainingError, match="effective_batch_size=12 is not a multiple"):
        fit(frame, replace(BASE, effective_batch_size=12), tmp=tmp_path)


def test_unknown_fold(frame, tmp_path):
    with pytest.raises(TrainingError, match=r"fold 7 is not in folds\.parquet"):
        fit(frame, fold=7, tmp=tmp_path)


def test_two_processes_match_one_process(tmp_path):
    """Data parallel over two CPU processes (gloo) equals one process accumulating the same batches."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import torch

    from tests import ddp_worker

    backbone = tmp_path / "backbone"
    shutil.copytree(BACKBONE, backbone)
    config = json.loads((backbone / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (backbone / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    outs = {}
    for name in ("one", "two"):
        for old in ("model", "ckpt", "oof.csv"):
            shutil.rmtree(tmp_path / old, ignore_errors=True) if old != "oof.csv" else (tmp_path / old).unlink(
                missing_ok=True)
        if name == "one":  # the reference in this process (the worker's own code path, one thread as in the ranks)
            threads = torch.get_num_threads()
            try:
                ddp_worker.main(tmp_path, 8)
            finally:
                torch.set_num_threads(threads)
        else:
            result = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                 "tests/ddp_worker.py", str(tmp_path), "8"], cwd=REPO, env=env, capture_output=True, text=True,
                timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
        outs[name] = pd.read_csv(tmp_path / "oof.csv").sort_values("essay_id")
        assert (tmp_path / "processes.txt").read_text() == {"one": "1", "two": "2"}[name]
    np.testing.assert_allclose(outs["one"]["pred"], outs["two"]["pred"], atol=1e-4)


def test_head_tail_tokens_are_the_same_in_training_and_inference(frame, tmp_path):
    from common.infer.inference import TokenCache

    table, texts = frame
    texts = [f"{text} {'and in the end ' * 40}the last words." for text in texts]
    spec = replace(BASE, truncation_side="head_tail")
    tokenizer, data = tokenize_train(spec, BACKBONE, table, texts)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"model": asdict(spec)}))
    ids, _ = TokenCache(texts).get(tmp_path)
    assert ids == data.input_ids
    assert all(len(row) == spec.max_length for row in ids)
    tail = tokenizer(" the last words.", add_special_tokens=False)["input_ids"]
    assert all(row[-1 - len(tail) : -1] == tail for row in ids)  # every essay's end is kept


def test_sliding_windows_score_whole_essays_alike_in_training_and_inference(frame, tmp_path):
    import torch

    from common.infer.inference import TokenCache, predict_fold_model
    from common.models import EssayScorer

    table, texts = frame
    texts = [f"{text} {'and in the end ' * 40}the last words." for text in texts]
    spec = replace(BASE, max_length=32, windows=4, window_overlap=8)
    result = fit((table, texts), spec, tmp=tmp_path)
    held = [t for t, k in zip(texts, table["fold"], strict=True) if k == 0]
    ids, collator = TokenCache(held).get(tmp_path / "model")
    batch = collator([{"input_ids": row} for row in ids[:3]])
    assert batch["windows"].tolist() == [4, 4, 4] and batch["input_ids"].shape[1] == 32  # the whole budget, cut
    pred, _ = predict_fold_model(tmp_path / "model", ids, collator, [torch.device("cpu")], "auto", batch_tokens=300)
    np.testing.assert_allclose(pred, result.oof["pred"].to_numpy(), atol=1e-4)  # what training recorded
    model = EssayScorer.load(tmp_path / "model").eval()
    with torch.no_grad():
        pooled = model(batch["input_ids"], batch["attention_mask"], batch["windows"])
        each = model(batch["input_ids"], batch["attention_mask"])  # one row per window
    torch.testing.assert_close(pooled, each.view(3, 4, -1).mean(dim=1))  # an essay's logits: its windows' mean
    assert not torch.allclose(each.view(3, 4, -1)[:, 0], pooled)  # the later windows count


def test_settings_added_since_keep_the_folds_trained_before_them():
    """A fold records (and fingerprints) no setting that is still at a default that trains as before it existed, so
    upgrading the pipeline does not retrain it; the same setting away from its default does count."""
    from common.models.tokenization import TokenSettings

    assert not set(fingerprints.NEUTRAL_AT_DEFAULT) & set(fingerprints.unit_settings(BASE))
    assert "seeds" not in fingerprints.unit_settings(replace(BASE, seeds=[1, 2]))
    windowed = replace(BASE, windows=2)
    assert fingerprints.unit_settings(windowed)["windows"] == 2
    assert fingerprint(windowed) != fingerprint(BASE) == fingerprint(replace(BASE, seeds=[7], full_fit="beside"))
    # What inference reads back from train_config.json equals what training tokenised with.
    assert TokenSettings.of(fingerprints.unit_settings(windowed)) == TokenSettings.of(windowed)
    assert TokenSettings.of(fingerprints.unit_settings(BASE)) == TokenSettings.of(BASE)  # windows left out: default


def fingerprint(spec):
    return fingerprints.fold_fingerprint(spec, BACKBONE, "data", None, 0, 3)


def _series(live, name: str) -> pd.DataFrame:
    return pd.read_csv(live / "plots" / "metrics" / f"{name}.tsv", sep="\t")


def test_telemetry_logs_every_step_to_dvclive_and_leaves_training_unchanged(frame, tmp_path):
    spec = replace(BASE, stages=[StageParams(epochs=2.0)], eval_every=1)  # statistics at every step
    live = tmp_path / "live"
    result = fit(frame, spec, tmp=tmp_path, telemetry=fold_run.Telemetry(live_dir=live, layer_stats=True))
    quiet = fit(frame, spec, tmp=tmp_path / "quiet")
    pd.testing.assert_frame_equal(result.oof, quiet.oof)  # the statistics' extra forward pass changes nothing
    np.testing.assert_array_equal(result.log["train_loss"], quiet.log["train_loss"])  # at every step after it
    steps = result.log["step"].tolist()
    for name in ("train_loss", "lr", "grad_norm", "tokens_per_second"):
        series = _series(live, name)
        assert series["step"].tolist() == steps and series[name].notna().all(), name
    np.testing.assert_allclose(_series(live, "train_loss")["train_loss"], result.log["train_loss"])
    assert (_series(live, "grad_norm")["grad_norm"] > 0).all()
    qwk = _series(live, "eval_qwk")
    assert qwk["step"].tolist() == result.log.dropna(subset=["eval_qwk"])["step"].tolist()
    groups = sorted(p.stem for p in (live / "plots" / "metrics" / "layer_grad_norm").glob("*.tsv"))
    assert groups[0] == "embeddings" and groups[-1] == "layers_1-1" and "head" in groups
    assert (_series(live, "layer_grad_norm/head")["head"] > 0).all()
    assert _series(live, "act_std/layers_1-1")["layers_1-1"].gt(0).all()
    assert json.loads((live / "metrics.json").read_text())["step"] == steps[-1]


def test_a_resumed_run_logs_the_same_series_as_an_uninterrupted_one(frame, tmp_path):
    spec = replace(BASE, stages=[StageParams(epochs=2.0)], checkpoint_every=2, eval_every=2)
    tel = {name: fold_run.Telemetry(live_dir=tmp_path / name / "live") for name in ("whole", "killed")}
    fit(frame, spec, tmp=tmp_path / "whole", telemetry=tel["whole"])
    with pytest.raises(Interrupted):
        fit(frame, spec, tmp=tmp_path / "killed", stop_after_steps=5, telemetry=tel["killed"])
    assert _series(tel["killed"].live_dir, "train_loss")["step"].max() == 5  # logged past the checkpoint (4)
    fit(frame, spec, tmp=tmp_path / "killed", telemetry=tel["killed"])
    for name in ("train_loss", "eval_qwk", "grad_norm"):
        pd.testing.assert_frame_equal(_series(tel["killed"].live_dir, name), _series(tel["whole"].live_dir, name))


def test_profile_steps_write_a_trace(frame, tmp_path):
    where = tmp_path / "profile"
    fit(frame, tmp=tmp_path, telemetry=fold_run.Telemetry(profile_steps=2, profile_dir=where))
    trace = json.loads((where / "trace.json").read_text())
    assert trace["traceEvents"] and "aten::" in (where / "profile.txt").read_text()


def test_the_logged_learning_rate_is_the_one_lr_names(frame, tmp_path):
    """With layer-wise decay the log's lr is the top encoder layer's (`lr`), not the embeddings' lower rate."""
    spec = replace(BASE, scheduler="constant", warmup_ratio=0.0, layerwise_lr_decay=0.5)
    result = fit(frame, spec, tmp=tmp_path)
    np.testing.assert_allclose(result.log["lr"], spec.lr)
