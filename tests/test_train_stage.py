"""Stage 02_train end to end through its command line on generated demo data."""

import contextlib
import json
import math
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
FAST = ["train.models.tiny-regression.max_length=64", "train.models.tiny-regression.seeds=[]", "train.models.tiny-regression.stages=[{rows: all, epochs: 1.0}]", "train.device=cpu"]


def test_trains_every_fold_and_collects_the_oof(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    args = [f"paths.input={folder}", f"paths.output={tmp_path}", "train.model=tiny-regression", *FAST]
    first = run_cli("02_train", *args, "train.folds=[0, 1]", "train.step=fit")
    assert first.returncode == 0, first.stderr[-3000:]
    model_dir = tmp_path / "train" / "tiny-regression"
    assert sorted(p.name for p in (model_dir / "folds").iterdir()) == ["fold_0", "fold_1"]
    early = run_cli("02_train", *args, "train.step=collect")  # folds 2 and 3 are missing
    assert early.returncode == 2 and "fold(s) [2, 3] not trained" in early.stderr
    assert "python 02_train/run.py train.model=tiny-regression" in early.stderr
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
    fold_dir = model_dir / "folds" / "fold_0"
    for name in ("scorer.json", "model.safetensors", "tokenizer.json", "train_config.json", "log.csv"):
        assert (fold_dir / name).exists(), name
    assert not (tmp_path / "checkpoints" / "tiny-regression" / "fold_0" / "checkpoint.pt").exists()
    assert not [p for p in (model_dir / "folds").iterdir() if p.name.startswith(".")]
    timings = json.loads((tmp_path / "timings" / "tiny-regression" / "fold_0.json").read_text())
    assert timings["seconds"] > 0 and "seconds" not in json.loads((fold_dir / "metrics.json").read_text())
    fold_log = pd.read_csv(fold_dir / "log.csv")  # what dvc.lock hashes: no speed, no per-layer figures
    assert "grad_norm" in fold_log and "tokens_per_second" not in fold_log
    assert not [c for c in fold_log if "/" in c]
    curves = pd.read_csv(tmp_path / "curves" / "tiny-regression" / "eval_qwk.tsv", sep="\t")
    assert list(curves.columns) == ["step", "unit", "eval_qwk"]  # dvc plots: one line per unit
    assert sorted(curves["unit"].unique()) == ["fold_0", "fold_1", "fold_2", "fold_3"]
    speed = pd.read_csv(tmp_path / "curves" / "tiny-regression" / "tokens_per_second.tsv", sep="\t")
    assert (speed["tokens_per_second"] > 0).all()
    assert (tmp_path / "live" / "tiny-regression" / "fold_3" / "plots" / "metrics" / "layer_grad_norm").is_dir()
    headline = json.loads((tmp_path / "exp_metrics" / "train" / "tiny-regression.json").read_text())
    assert headline["qwk_rounded"] == round(metrics["qwk_rounded"], 4) and set(headline) == {
        "qwk_rounded", "qwk_rounded_other", "rmse"}


def test_missing_backbone(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", *FAST,
                     f"backbone={tmp_path / 'no-such-model'}", "train.model=tiny-regression")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no-such-model" in result.stderr and "local model folder" in result.stderr
    assert not (tmp_path / "train").exists()


def test_an_uncached_backbone_fails_once_at_start_naming_model_and_key(prepared_output, demo_input, tmp_path):
    """Checked before tokenising or fold workers: one message, not one failure per fold worker."""
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", *FAST, "train.fold_workers=2",
                     "train.models.tiny-regression.backbone=aes-test/not-in-any-cache", "train.model=tiny-regression")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("not-in-any-cache") == 2  # once in the problem, once in the fix
    assert "model tiny-regression: train.models.tiny-regression.backbone='aes-test/not-in-any-cache'" in result.stderr
    assert "`hf download aes-test/not-in-any-cache`" in result.stderr
    assert "started on" not in result.stderr and not (tmp_path / "checkpoints").exists()


def test_mlm_checks_the_backbone_before_reading_the_essays(tmp_path):
    result = run_cli("01_pseudo_label/mlm.py", f"paths.input={tmp_path / 'no-data'}", f"paths.output={tmp_path}",
                     f"paths.metrics={tmp_path}", "train.model=tiny-student", "backbone=aes-test/not-in-any-cache")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model tiny-student: backbone='aes-test/not-in-any-cache'" in result.stderr
    assert "`hf download aes-test/not-in-any-cache`" in result.stderr


def test_backbones_resolve_from_a_folder_or_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from common.config.loader import load_params
    from common.core.errors import PipelineError
    from common.train.train_stage import check_backbones
    from tests.conftest import BACKBONE, REPO

    params = load_params(REPO / "params.yaml")
    snapshot = tmp_path / "models--aes-test--cached" / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--aes-test--cached" / "refs").mkdir()
    (tmp_path / "models--aes-test--cached" / "refs" / "main").write_text("0123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    check_backbones([("tiny-regression", BACKBONE), ("tiny-ordinal", "aes-test/cached")], params)
    with pytest.raises(PipelineError) as err:
        check_backbones([("tiny-regression", "aes-test/absent"), ("tiny-ordinal", str(tmp_path / "nothing")),
                         ("tiny-student", "aes-test/absent")], params)
    message = str(err.value)
    assert message.count("`hf download aes-test/absent`") == 1
    for name in ("tiny-regression", "tiny-ordinal", "tiny-student"):
        assert f"model {name}: backbone=" in message


def test_fold_not_in_folds_file(prepared_output, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    result = run_cli("02_train", f"paths.input={folder}", f"paths.output={tmp_path}", *FAST, "train.folds=[9]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.folds=[9]: fold(s) [9] do not exist with prepare.n_folds=4" in result.stderr


def test_a_bad_model_entry_is_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  models: {a: {}}\n  students: {a: {teacher: a, stages: [{with_pseudo: true}]}}\n")
    result = run_cli("02_train", "--params", str(params))
    assert result.returncode == 2 and "['a'] are both in train.models and train.students" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_folds_it_says_to_run_prepare(tmp_path):
    result = run_cli("02_train", f"paths.output={tmp_path}")
    assert result.returncode == 2 and "run 00_prepare first" in result.stderr


@pytest.fixture
def model_args(prepared_output, demo_input, tmp_path):
    """Command-line arguments training tiny-regression briefly into tmp_path, which holds 00_prepare's output."""
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    return [f"paths.input={folder}", f"paths.output={tmp_path}", "train.model=tiny-regression", *FAST]


def three_folds(output):
    """The prepared folds under `output` made three (fold 3's essays join fold 0): the fold-worker tests start a
    process per fold, and three folds show all they check. Returns the override that agrees with the folds file."""
    path = output / "prepare" / "folds.parquet"
    folds = pd.read_parquet(path)
    folds["fold"] = folds["fold"] % 3
    folds.to_parquet(path, index=False)
    return ["prepare.n_folds=3"]


def test_folds_from_another_prepare_run_are_trained_again(model_args, tmp_path):
    """A fold counts as trained only on the folds and essays it was trained on (00_prepare re-run since)."""
    args = model_args
    first = run_cli("02_train", *args, "train.folds=[0]")
    assert first.returncode == 0, first.stderr[-3000:]
    same = run_cli("02_train", *args, "train.folds=[0]")
    assert "fold 0: already trained" in same.stderr
    folds_path = tmp_path / "prepare" / "folds.parquet"
    folds = pd.read_parquet(folds_path)
    folds["fold"] = (folds["fold"] + 1) % 4  # other folds: the old fold-0 model saw today's fold 0
    folds.to_parquet(folds_path, index=False)
    collect = run_cli("02_train", *args, "train.step=collect")
    assert collect.returncode == 2 and "trained on other folds" in collect.stderr
    again = run_cli("02_train", *args, "train.folds=[0]")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained" not in again.stderr
    oof = pd.read_parquet(tmp_path / "train" / "tiny-regression" / "folds" / "fold_0" / "oof.parquet")
    assert sorted(oof["essay_id"]) == sorted(folds.loc[folds["fold"] == 0, "essay_id"])


def test_folds_file_and_n_folds_must_agree(model_args, tmp_path):
    result = run_cli("02_train", *model_args, "prepare.n_folds=5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has 4 folds but prepare.n_folds=5: re-run 00_prepare" in result.stderr
    assert not (tmp_path / "train").exists()


def _assert_complete_fold(folder):
    from common.models import EssayScorer

    for name in ("scorer.json", "model.safetensors", "tokenizer.json", "train_config.json", "oof.parquet",
                 "metrics.json", "log.csv"):
        assert (folder / name).is_file(), folder / name
    EssayScorer.load(folder)


def test_two_data_parallel_processes_keep_every_fold(model_args, tmp_path):
    """torchrun with 2 gloo processes through the stage script: rank 0 alone stages and renames each fold."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
         "02_train/run.py", *model_args, "train.folds=[0, 1]", "train.num_threads=1", "train.fold_workers=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.fold_workers=2 not used" in result.stderr  # no fold workers spawned from every rank
    folds_dir = tmp_path / "train" / "tiny-regression" / "folds"
    assert sorted(p.name for p in folds_dir.iterdir()) == ["fold_0", "fold_1"]
    for k in (0, 1):
        _assert_complete_fold(folds_dir / f"fold_{k}")
        assert json.loads((folds_dir / f"fold_{k}" / "metrics.json").read_text())["processes"] == 2


def test_fold_workers_train_folds_concurrently_to_the_serial_runs_last_bit(model_args, tmp_path):
    """train.fold_workers=2 on CPU: two folds at a time in their own processes, the third when one is done, then the
    OOF file. Workers use the serial run's thread count, so a fold trains to the same bits as alone (a CPU reduction
    split over other threads would round otherwise)."""
    args = [*model_args, *three_folds(tmp_path)]
    result = run_cli("02_train", *args, "train.fold_workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training folds [0, 1, 2] with 2 workers" in result.stderr
    lines = result.stderr.splitlines()
    started = [i for i, line in enumerate(lines) if "started on CPU" in line]
    finished = [i for i, line in enumerate(lines) if "worker finished (exit 0)" in line]
    assert len(started) == 3 and len(finished) == 3
    assert started[1] < finished[0] < started[2]  # two folds at once, the third in the freed slot
    model_dir = tmp_path / "train" / "tiny-regression"
    for k in range(3):
        _assert_complete_fold(model_dir / "folds" / f"fold_{k}")
        assert (tmp_path / "checkpoints" / "tiny-regression" / f"fold_{k}.log").is_file()
    oof = pd.read_parquet(model_dir / "oof.parquet")
    assert len(oof) == len(pd.read_parquet(tmp_path / "prepare" / "folds.parquet"))
    # The workers were real runs of the stage: the same folds by hand are found trained.
    again = run_cli("02_train", *args)
    assert again.returncode == 0 and again.stderr.count("already trained") == 3
    # A worker's fold is bit-identical to the same fold trained alone in this process.
    serial = tmp_path / "serial"
    shutil.copytree(tmp_path / "prepare", serial / "prepare")
    alone = run_cli("02_train", *[a for a in args if not a.startswith("paths.output=")], f"paths.output={serial}",
                    "train.folds=[0]")
    assert alone.returncode == 0, alone.stderr[-3000:]
    fold = ("train", "tiny-regression", "folds", "fold_0", "oof.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path.joinpath(*fold)), pd.read_parquet(serial.joinpath(*fold)),
                                  check_exact=True)


def test_a_failing_worker_fails_the_stage_and_keeps_the_other_folds(model_args, tmp_path):
    args = [*model_args, *three_folds(tmp_path)]
    folds = pd.read_parquet(tmp_path / "prepare" / "folds.parquet")
    # Fold 1's first stage selects no rows: its training rows hold no persuade-origin essay.
    folds.loc[(folds["fold"] != 1) & (folds["origin"] == "persuade"), "origin"] = "other"
    folds.to_parquet(tmp_path / "prepare" / "folds.parquet", index=False)
    result = run_cli("02_train", *args, "train.models.tiny-regression.stages=[{rows: persuade, epochs: 1.0}, {rows: all, epochs: 1.0}]",
                     "train.fold_workers=2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fold(s) [1] failed in their workers" in result.stderr and "selects no rows" in result.stderr
    for k in (0, 2):
        _assert_complete_fold(tmp_path / "train" / "tiny-regression" / "folds" / f"fold_{k}")
    assert not (tmp_path / "train" / "tiny-regression" / "folds" / "fold_1").exists()
    assert not (tmp_path / "train" / "tiny-regression" / "oof.parquet").exists()


NETWORK_PROBE = """
import runpy, socket, sys
attempts = []
def blocked(*args, **kwargs):
    attempts.append(args)
    raise OSError("network blocked by the test")
socket.socket.connect = blocked
socket.getaddrinfo = blocked
socket.create_connection = blocked
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code, "network attempts", len(attempts))
"""


def test_a_hub_cached_backbone_trains_with_the_network_blocked(model_args, tmp_path):
    """A backbone given by hub name and found in the Hugging Face cache: no lookup leaves the machine."""
    import os
    import subprocess
    import sys

    from tests.conftest import BACKBONE, REPO

    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--aes-test--tiny-deberta" / "snapshots" / commit
    shutil.copytree(BACKBONE, snapshot)
    (cache / "models--aes-test--tiny-deberta" / "refs").mkdir()
    (cache / "models--aes-test--tiny-deberta" / "refs" / "main").write_text(commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-c", NETWORK_PROBE, "02_train/run.py", *model_args,
                             "backbone=aes-test/tiny-deberta", "train.folds=[0]"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert "exit 0 network attempts 0" in result.stdout, result.stdout + result.stderr[-3000:]
    config = json.loads((tmp_path / "train" / "tiny-regression" / "folds" / "fold_0" / "train_config.json").read_text())
    assert config["backbone"] == "aes-test/tiny-deberta"


@contextlib.contextmanager
def live_process():
    """The pid of another process that runs while the block runs (a lock holder other than this test's process,
    which runs the stage in-process)."""
    holder = subprocess.Popen(["sleep", "300"])
    try:
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_fold_another_process_trains_is_refused_and_a_dead_holders_lock_taken_over(model_args, tmp_path):
    import socket
    import sys

    lock = tmp_path / "checkpoints" / "tiny-regression" / "fold_0" / "lock"
    lock.parent.mkdir(parents=True)
    with live_process() as holder:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder, "since": "earlier"}))
        busy = run_cli("02_train", *model_args, "train.folds=[0]")
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert f"tiny-regression fold 0 is being trained by process {holder}" in busy.stderr
    assert f"delete {lock}" in busy.stderr and lock.exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout), "since": "earlier"}))
    taken = run_cli("02_train", *model_args, "train.folds=[0]")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "which no longer runs, taken over" in taken.stderr and not lock.exists()
    _assert_complete_fold(tmp_path / "train" / "tiny-regression" / "folds" / "fold_0")


def test_a_fold_with_unreadable_weights_trains_again(model_args, tmp_path):
    first = run_cli("02_train", *model_args, "train.folds=[0]")
    assert first.returncode == 0, first.stderr[-2000:]
    weights = tmp_path / "train" / "tiny-regression" / "folds" / "fold_0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    again = run_cli("02_train", *model_args, "train.folds=[0]")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already trained" not in again.stderr
    _assert_complete_fold(weights.parent)


def test_seeds_are_averaged_and_the_full_fit_trains_on_every_row(tmp_path):
    """Two seeds per fold and a full fit: the OOF file is the seeds' mean; dropping the second seed and the full
    fit keeps the first seed's folds (nothing retrains) and removes the rest."""
    from common.config.layout import inference_units
    from common.config.model_params import ModelParams, StageParams
    from common.train.train_stage import train_model
    from tests.conftest import BACKBONE, fold_table

    _, table, texts = fold_table(seed=5, n_train=64, n_corpus_only=10, n_folds=2)
    spec = ModelParams(name="t", max_length=64, stages=[StageParams(epochs=1.0)], batch_size=8, effective_batch_size=16,
                       lr=1e-3, head_lr=5e-3, warmup_ratio=0.0, seeds=[3, 4], full_fit="beside", keep_best=True,
                       eval_every=1)
    train_model(spec, BACKBONE, table, texts, tmp_path, 3, [], "cpu")
    folder = tmp_path / "train" / "t"
    names = ["fold_0", "fold_0_seed4", "fold_1", "fold_1_seed4", "full", "full_seed4"]
    assert sorted(p.name for p in (folder / "folds").iterdir()) == names  # seed 3 is the run's: no suffix
    assert [u.name for u in inference_units(spec, [0, 1], 3)] == ["fold_0", "fold_0_seed4", "fold_1", "fold_1_seed4",
                                                                  "full", "full_seed4"]
    per_seed = {n: pd.read_parquet(folder / "folds" / n / "oof.parquet").set_index("essay_id")["pred"]
                for n in names[:4]}
    assert not per_seed["fold_0"].equals(per_seed["fold_0_seed4"])  # another seed, another model
    oof = pd.read_parquet(folder / "oof.parquet").set_index("essay_id")["pred"]
    expected = pd.concat([(per_seed["fold_0"] + per_seed["fold_0_seed4"]) / 2,
                          (per_seed["fold_1"] + per_seed["fold_1_seed4"]) / 2])
    pd.testing.assert_series_equal(oof.sort_index(), expected.sort_index(), check_names=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["seeds"]) == {"3", "4"} and set(metrics["folds"]) == {"0", "0_seed4", "1", "1_seed4"}
    full = json.loads((folder / "folds" / "full" / "metrics.json").read_text())
    folds_steps = json.loads((folder / "folds" / "fold_0" / "metrics.json").read_text())["steps"]
    assert full["n_train_rows"] == len(table) and full["n_held_out"] == 0 and full["qwk_rounded"] is None
    # Where CV stopped: the folds' best steps as a share of their last stage, the full fit's steps that share.
    best = [json.loads((folder / "folds" / n / "metrics.json").read_text())["best_step"] / folds_steps
            for n in names[:4]]
    assert full["stop_fraction"] == pytest.approx(np.mean(best), abs=1e-4)
    assert full["steps"] == max(1, round(math.ceil(len(table) / 8 / 2) * full["stop_fraction"]))
    assert pd.read_parquet(folder / "folds" / "full" / "oof.parquet").empty
    before = {n: (folder / "folds" / n / "model.safetensors").stat().st_mtime_ns for n in ("fold_0", "fold_1")}
    train_model(replace(spec, seeds=[3], full_fit="off"), BACKBONE, table, texts, tmp_path, 3, [], "cpu")
    assert sorted(p.name for p in (folder / "folds").iterdir()) == ["fold_0", "fold_1"]
    assert before == {n: (folder / "folds" / n / "model.safetensors").stat().st_mtime_ns for n in before}
    alone = pd.read_parquet(folder / "oof.parquet").set_index("essay_id")["pred"]
    pd.testing.assert_series_equal(alone.sort_index(), pd.concat([per_seed["fold_0"], per_seed["fold_1"]]).sort_index(),
                                   check_names=False)


FAKE_WORKER = """
import sys
fold = [a for a in sys.argv if a.startswith("train.folds=")][0]
print("12:00:00 INFO loading", fold, flush=True)
sys.stderr.write("t fold stage 1:  40%|####      | 4/10 [00:02<00:03]\\r")
sys.stderr.write("t fold stage 1:  90%|######### | 9/10 [00:05<00:01]\\r")
"""


def test_fold_workers_print_their_log_paths_and_progress(tmp_path, monkeypatch, caplog):
    """The console shows where each worker logs, and each worker's latest progress line (here at its end)."""
    import logging

    from common.config.loader import load_params
    from common.train import fold_workers
    from tests.conftest import REPO

    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    params = load_params(REPO / "params.yaml", [f"paths.output={tmp_path}", "train.device=cpu",
                                                 "train.fold_workers=2"])
    monkeypatch.setattr(fold_workers, "PROGRESS_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="common.train.fold_workers"):
        fold_workers.train_in_workers(params, "tiny-regression", [0, 1], script)
    logs = {k: tmp_path / "checkpoints" / "tiny-regression" / f"fold_{k}.log" for k in (0, 1)}
    assert f"their logs: {logs[0]}, {logs[1]}" in caplog.text
    for k, path in logs.items():
        assert f"fold {k}: started on CPU, log {path}" in caplog.text
        assert f"fold {k}: worker finished (exit 0); its last line: t fold stage 1:  90%" in caplog.text
    assert fold_workers.latest_progress(tmp_path / "absent.log") == ""


def test_fold_worker_lines_start_a_console_line_of_their_own(tmp_path, monkeypatch, capsys):
    """The folds bar does not glue itself to the log lines: each one starts on a line of its own (the bar is cleared
    before it and drawn again after), as a terminal shows them."""
    import logging
    import re

    from common.config.loader import load_params
    from common.core.logs import setup_logging
    from common.train import fold_workers
    from tests.conftest import REPO

    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    params = load_params(REPO / "params.yaml", [f"paths.output={tmp_path}", "train.device=cpu",
                                                 "train.fold_workers=1"])
    monkeypatch.setattr(fold_workers, "PROGRESS_EVERY", 0.0)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging()  # the stages' console handler, on this test's captured stderr
    try:
        fold_workers.train_in_workers(params, "tiny-regression", [0, 1], script)
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    shown = [line.split("\r")[-1] for line in err.split("\n") if "common.train.fold_workers" in line]
    assert len(shown) >= 5, err
    glued = [line for line in shown if not re.match(r"\d\d:\d\d:\d\d INFO", line)]
    assert not glued, f"log lines glued to the folds bar: {glued}"


def _tiny_spec(**changes):
    from common.config.model_params import ModelParams, StageParams

    return ModelParams(name="t", max_length=64, stages=[StageParams(epochs=1.0)], batch_size=8, effective_batch_size=16,
                       lr=1e-3, head_lr=5e-3, warmup_ratio=0.0, **changes)


def test_the_largest_seed_trains_and_the_oof_file_stays_until_a_fold_has_trained_again(tmp_path, monkeypatch):
    """seed + fold must not overflow numpy's 32-bit seeds, and the model's oof.parquet is removed only once a fold
    that makes it stale has trained (a failed fold leaves it as it was)."""
    import common.train.train_stage
    from common.train.train_stage import train_model
    from common.train.training import TrainingError
    from tests.conftest import BACKBONE, fold_table

    _, table, texts = fold_table(seed=5, n_train=48, n_corpus_only=10, n_folds=2)
    spec = _tiny_spec()
    oof = tmp_path / "train" / "t" / "oof.parquet"
    oof.parent.mkdir(parents=True)
    oof.write_bytes(b"the previous OOF file")

    def fails(*args, **kwargs):
        raise TrainingError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(common.train.train_stage, "train_fold", fails)
        with pytest.raises(TrainingError, match="disk full"):
            train_model(spec, BACKBONE, table, texts, tmp_path, 4294967295, [1], "cpu")
    assert oof.read_bytes() == b"the previous OOF file"
    train_model(spec, BACKBONE, table, texts, tmp_path, 4294967295, [1], "cpu")  # fold 1: seed 2**32 folded to 0
    assert json.loads((tmp_path / "train" / "t" / "folds" / "fold_1" / "train_config.json").read_text())["seed"] == (
        4294967295)
    assert not oof.exists()  # fold 1 trained again: the old OOF file no longer describes the model


def _count_essay_hashing(monkeypatch) -> list[int]:
    """The number of texts of every `data_fingerprint` call from now on (each hashes every essay it is given)."""
    from common.train import fingerprints

    hashed: list[int] = []
    original = fingerprints.add_texts

    def spy(digest, texts):
        hashed.append(len(texts))
        original(digest, texts)

    monkeypatch.setattr(fingerprints, "add_texts", spy)
    return hashed


def test_a_stage_run_hashes_the_essays_once(prepared_output, demo_input, tmp_path, monkeypatch):
    """data_fingerprint reads every essay (seconds on the competition's data): a 02_train run hashes them once,
    however often it plans (kept units, each unit again under its lock, the model's inputs)."""
    folder, _ = demo_input
    shutil.copytree(prepared_output / "prepare", tmp_path / "prepare")
    hashed = _count_essay_hashing(monkeypatch)
    args = [f"paths.input={folder}", f"paths.output={tmp_path}", "train.model=tiny-tfidf"]
    for run in ("trains", "keeps"):
        hashed.clear()
        result = run_cli("02_train", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(hashed) == 1, f"the run that {run} every fold hashed the essays {len(hashed)} times"
    assert "tiny-tfidf fold 3: already trained" in result.stderr


def test_a_model_hashes_its_essays_once_for_planning_and_tokenising(tmp_path, monkeypatch):
    """train_model called alone (no fingerprint given) hashes once, and the tokenised rows carry that hash."""
    import common.train.train_stage
    from common.train.fingerprints import data_fingerprint
    from common.train.train_stage import train_model
    from common.train.training import TrainingError
    from tests.conftest import BACKBONE, fold_table

    _, table, texts = fold_table(seed=5, n_train=48, n_corpus_only=10, n_folds=2)
    sources = []

    def stop(spec, backbone, tokenizer, data, *args, **kwargs):
        sources.append(data.source)
        raise TrainingError("stopped once tokenised")

    hashed = _count_essay_hashing(monkeypatch)
    monkeypatch.setattr(common.train.train_stage, "train_fold", stop)
    with pytest.raises(TrainingError, match="stopped once tokenised"):
        train_model(_tiny_spec(), BACKBONE, table, texts, tmp_path, 3, [0], "cpu")
    assert len(hashed) == 1
    assert sources == [data_fingerprint(table, texts)]


def test_the_run_seed_neither_renames_nor_retrains_a_model_with_its_own_seeds():
    from common.config.layout import inference_units

    spec = _tiny_spec(seeds=[42, 7], full_fit="beside")
    names = ["fold_0", "fold_0_seed7", "fold_1", "fold_1_seed7", "full", "full_seed7"]
    for run_seed in (42, 7, 1):
        units = inference_units(spec, [0, 1], run_seed)
        assert [u.name for u in units] == names
        assert [u.run_seed(run_seed) for u in units] == [42, 7, 42, 7, 42, 7]  # what each fingerprint holds
    assert [u.run_seed(1) for u in inference_units(_tiny_spec(), [0], 1)] == [1]  # no seeds: the run's


DIE_WITH_PARENT = """
import sys
from pathlib import Path
from common.train.fold_workers import start_worker
proc, _ = start_worker([sys.executable, "-c", "import time; time.sleep(600)"], None, Path(sys.argv[1]))
print(proc.pid, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_fold_worker_dies_with_its_parent_and_appends_to_its_log(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    log = tmp_path / "fold_0.log"
    log.write_text("what an earlier worker wrote\n")
    parent = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT, str(log)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    os.kill(parent.pid, signal.SIGKILL)  # no handler, no finally: only the kernel can take the worker along
    parent.wait()
    for _ in range(300):  # the kernel signals at once; this only bounds the wait for the reaper
        if not _alive(worker):
            break
        time.sleep(0.1)
    assert not _alive(worker)
    assert log.read_text().startswith("what an earlier worker wrote\n")


def test_a_fold_a_live_process_trains_is_not_started_and_its_log_kept(model_args, tmp_path):
    import socket

    work = tmp_path / "checkpoints" / "tiny-regression"
    with live_process() as holder:
        for k in (0, 1):
            (work / f"fold_{k}").mkdir(parents=True)
            (work / f"fold_{k}" / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder,
                                                                 "since": "earlier"}))
            (work / f"fold_{k}.log").write_text("an orphan's progress bars\n")
        result = run_cli("02_train", *model_args, "train.folds=[0, 1]", "train.fold_workers=2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"is being trained by process {holder}" in result.stderr and "started on CPU" not in result.stderr
    for k in (0, 1):
        assert (work / f"fold_{k}.log").read_text() == "an orphan's progress bars\n"
