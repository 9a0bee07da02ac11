"""05_infer: the inference library on its own, and the stage end to end on briefly trained demo models."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from common.config.loader import load_params
from common.core.artifact_checks import ArtifactError
from common.core.errors import InputError, PipelineError
from common.ensemble.features import fit_prompt_stats, stacker_features
from common.ensemble.stacker import LGBMStacker
from common.infer.artifacts import ArtifactSet
from common.infer.inference import TestPredictions as ModelPredictions
from common.infer.inference import TokenCache, ensemble_scores, predict_fold_model
from common.infer.runtime import estimate_runtime
from common.infer.submission import make_submission, read_test, resolve_paths, validate_submission
from common.prepare.clusters import PromptAssigner
from common.prepare.text_features import TextFeaturizer
from common.scoring.oof import load_oof_predictions
from tests.conftest import REPO, run_cli, with_metrics_dir

# Refuses every connection attempt before the stage runs: the stage must not need the network.
NO_NETWORK = """
import runpy, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted during offline inference")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_offline(script: str, *overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", NO_NETWORK, script, *with_metrics_dir(overrides)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def write_csvs(folder: Path, test: pd.DataFrame, sample: pd.DataFrame) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    test.to_csv(folder / "test.csv", index=False)
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return folder / "test.csv", folder / "sample_submission.csv"


# ------------------------------------------------------------------------------------------------
# Test essays and submissions


def test_read_test_is_lenient_with_empty_essays_and_strict_with_ids(tmp_path, caplog):
    test = pd.DataFrame({"essay_id": ["a", "b", "c"], "full_text": ["Some words.", "", "More words here."]})
    sample = pd.DataFrame({"essay_id": ["c", "a", "b"], "score": [3, 3, 3]})
    frame, order = read_test(*write_csvs(tmp_path / "ok", test, sample))
    assert frame["full_text"].tolist() == ["Some words.", "", "More words here."]
    assert order["essay_id"].tolist() == ["c", "a", "b"]
    assert "1 empty essay(s)" in caplog.text

    with pytest.raises(InputError, match="duplicate essay_id") as info:
        read_test(*write_csvs(tmp_path / "dup", pd.concat([test, test.iloc[:1]]), sample))
    assert "test.csv" in str(info.value)
    with pytest.raises(InputError, match=r"essay ids \['z'\] have no essay"):
        read_test(*write_csvs(tmp_path / "extra", test, pd.concat([sample, pd.DataFrame({"essay_id": ["z"],
                                                                                          "score": [1]})])))
    with pytest.raises(InputError, match=r"\['b'\] are missing from"):
        read_test(*write_csvs(tmp_path / "fewer", test, sample[sample["essay_id"] != "b"]))
    with pytest.raises(InputError, match="missing column"):
        read_test(*write_csvs(tmp_path / "cols", test.rename(columns={"full_text": "text"}), sample))


def test_submission_follows_the_sample_and_is_validated():
    sample = pd.DataFrame({"essay_id": ["c", "a", "b"]})
    submission = make_submission(sample, np.array(["a", "b", "c"]), np.array([1, 6, 4]))
    assert submission.to_dict("list") == {"essay_id": ["c", "a", "b"], "score": [4, 1, 6]}
    assert submission["score"].dtype.kind == "i"
    with pytest.raises(PipelineError, match="outside the integers 1-6"):
        make_submission(sample, np.array(["a", "b", "c"]), np.array([0, 6, 4]))
    with pytest.raises(PipelineError, match="missing or outside"):
        make_submission(sample, np.array(["a", "b"]), np.array([2, 3]))
    with pytest.raises(PipelineError, match="set or order"):
        validate_submission(submission.iloc[::-1], sample)


def test_paths_switch_to_kaggle_when_its_input_folder_exists(tmp_path):
    params = load_params(REPO / "params.yaml", [f"infer.kaggle_root={tmp_path / 'kaggle'}"])
    local = resolve_paths(params)
    assert not local.on_kaggle and local.submission == Path("output") / "submission.csv"
    (tmp_path / "kaggle" / "input").mkdir(parents=True)
    kaggle = resolve_paths(params)
    assert kaggle.on_kaggle
    assert kaggle.test == tmp_path / "kaggle/input/learning-agency-lab-automated-essay-scoring-2/test.csv"
    assert kaggle.artifacts == tmp_path / "kaggle/input/aes-pipeline-artifacts"
    assert kaggle.submission == tmp_path / "kaggle/working/submission.csv"


# ------------------------------------------------------------------------------------------------
# On trained demo models



@pytest.fixture
def artifacts_copy(trained_output, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(trained_output / "train", root / "train")
    shutil.copytree(trained_output / "ensemble" / "artifacts", root / "ensemble" / "artifacts")
    return root


@pytest.mark.slow
def test_a_model_predicts_in_inference_what_training_recorded(trained_output, demo_input):
    folder, _ = demo_input
    train = pd.read_csv(folder / "train.csv")
    artifacts = ArtifactSet.open(trained_output)
    for name in artifacts.models:
        fold_dir = artifacts.fold_dirs[name][0]
        oof = pd.read_parquet(fold_dir / "oof.parquet").merge(train, on="essay_id")
        ids, collator = TokenCache(oof["full_text"].tolist()).get(fold_dir)
        # A tight budget makes other batches than training used: padding must not matter either.
        pred, probs = predict_fold_model(fold_dir, ids, collator, [torch.device("cpu")], "auto", batch_tokens=300)
        np.testing.assert_allclose(pred, oof["pred"].to_numpy(), atol=1e-4, rtol=0)
        if "prob_1" in oof.columns:
            np.testing.assert_allclose(probs, oof[[f"prob_{k}" for k in range(1, 7)]].to_numpy(), atol=1e-4)


@pytest.mark.slow
def test_the_stage_writes_a_valid_submission_with_the_network_blocked(trained_output, demo_input, tmp_path):
    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(trained_output, out)
    result = run_offline("05_infer/run.py", f"paths.input={folder}", f"paths.output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runtime estimate" in result.stderr
    submission = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(folder / "sample_submission.csv")
    assert submission["essay_id"].tolist() == sample["essay_id"].tolist()
    assert submission["score"].between(1, 6).all() and submission["score"].dtype.kind == "i"
    metrics = json.loads((out / "infer" / "metrics.json").read_text())
    # params.yaml: tiny-regression has two seeds (8 fold models), tiny-ordinal a full fit beside its 4 folds.
    assert metrics["n_essays"] == len(sample) and metrics["runtime_estimate"]["n_fold_models"] == 13
    predictions = pd.read_parquet(out / "infer" / "test_predictions.parquet")
    members = {"tiny-regression": [f"fold_{k}{s}" for k in range(4) for s in ("", "_seed7")],
               "tiny-ordinal": [*(f"fold_{k}" for k in range(4)), "full"]}
    for name, units in members.items():
        columns = sorted(c for c in predictions.columns if c.startswith(f"{name}__"))
        assert columns == sorted(f"{name}__{u}" for u in units)
        np.testing.assert_allclose(predictions[name], predictions[columns].mean(axis=1), atol=1e-9)
    assert not np.allclose(predictions["tiny-ordinal__full"], predictions["tiny-ordinal__fold_0"])


@pytest.mark.slow
def test_the_guard_really_blocks_the_network(tmp_path):
    script = tmp_path / "dial.py"
    script.write_text("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)\n")
    result = run_offline(str(script))
    assert result.returncode != 0 and "network access attempted" in result.stderr


@pytest.mark.slow
def test_a_missing_fold_fails_before_any_work_and_writes_nothing(artifacts_copy, demo_input, tmp_path):
    folder, _ = demo_input
    shutil.rmtree(artifacts_copy / "train" / "tiny-ordinal" / "folds" / "fold_2")
    (artifacts_copy / "train" / "tiny-regression" / "folds" / "fold_1" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError) as info:
        ArtifactSet.open(artifacts_copy)
    message = str(info.value)
    assert "tiny-ordinal/folds/fold_2/scorer.json" in message
    assert "tiny-regression/folds/fold_1/model.safetensors" in message
    result = run_cli("05_infer", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}",
                     f"infer.artifacts={artifacts_copy}")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "fold_2" in result.stderr
    assert not (tmp_path / "out" / "submission.csv").exists()


def truncate(path: Path) -> None:
    """Cut a file to half its size, as an interrupted copy or upload leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_a_truncated_fold_model_fails_before_any_model_runs(artifacts_copy, demo_input, tmp_path):
    folder, _ = demo_input
    weights = artifacts_copy / "train" / "tiny-ordinal" / "folds" / "fold_3" / "model.safetensors"
    truncate(weights)  # the last fold of the last model: reached after every other fold model ran
    result = run_cli("05_infer", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}",
                     f"infer.artifacts={artifacts_copy}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{weights}: not a readable safetensors file" in result.stderr and "truncated or corrupt" in result.stderr
    assert "python 02_train/run.py train.model=tiny-ordinal" in result.stderr
    assert "fold models in" not in result.stderr  # no model ran
    assert not (tmp_path / "out" / "submission.csv").exists()


@pytest.mark.slow
def test_a_truncated_ensemble_json_is_reported_by_name(artifacts_copy, demo_input, tmp_path):
    folder, _ = demo_input
    spec_file = artifacts_copy / "ensemble" / "artifacts" / "ensemble.json"
    truncate(spec_file)
    result = run_cli("05_infer", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}",
                     f"infer.artifacts={artifacts_copy}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{spec_file}: not valid JSON" in result.stderr and "04_ensemble" in result.stderr
    assert not (tmp_path / "out" / "submission.csv").exists()


@pytest.mark.slow
def test_every_unreadable_file_is_named_in_one_message(artifacts_copy, demo_input, tmp_path):
    folder, _ = demo_input
    ensemble_dir = artifacts_copy / "ensemble" / "artifacts"
    spec = json.loads((ensemble_dir / "ensemble.json").read_text())
    spec["selected"], spec["thresholds"] = "stacker", spec["methods"]["stacker"]["thresholds"]
    (ensemble_dir / "ensemble.json").write_text(json.dumps(spec))
    ArtifactSet.open(artifacts_copy)  # whole: opens
    booster = ensemble_dir / "stacker" / "fold_1.txt"
    truncate(booster)  # LightGBM itself crashes the process (lightgbm 4.7) or loads a cut file silently
    scorer = artifacts_copy / "train" / "tiny-regression" / "folds" / "fold_0" / "scorer.json"
    scorer.write_text('{"backbone": "input/tiny-deberta-v2", "head": ')
    # In a subprocess: were LightGBM to see the truncated file, a crash must not take pytest down.
    result = run_cli("05_infer", f"paths.input={folder}", f"paths.output={tmp_path / 'out'}",
                     f"infer.artifacts={artifacts_copy}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{booster}: " in result.stderr and f"{scorer}: not valid JSON" in result.stderr
    assert result.stderr.count("artifacts missing or unreadable") == 1  # one message names both
    assert "re-run python 04_ensemble/run.py" in result.stderr
    assert "python 02_train/run.py train.model=tiny-regression" in result.stderr
    assert "fold models in" not in result.stderr
    assert not (tmp_path / "out" / "submission.csv").exists()

    (ensemble_dir / "prompt_assigner.npz").write_bytes(b"PK\x03\x04 cut")
    (ensemble_dir / "text_vocabulary.json").write_text('["a", "b"')
    with pytest.raises(ArtifactError) as info:
        ArtifactSet.open(artifacts_copy)
    message = str(info.value)
    for path in (booster, scorer, ensemble_dir / "prompt_assigner.npz", ensemble_dir / "text_vocabulary.json"):
        assert f"{path}: " in message


def test_a_lightgbm_model_cut_anywhere_is_refused_before_lightgbm_reads_it(tmp_path):
    import lightgbm as lgb

    from common.core.lightgbm_files import lightgbm_model_problem

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    booster = lgb.train({"verbose": -1, "num_leaves": 4}, lgb.Dataset(X, X[:, 0]), num_boost_round=3)
    whole = tmp_path / "model.txt"
    booster.save_model(whole)
    assert lightgbm_model_problem(whole) is None
    data = whole.read_bytes()
    cut = tmp_path / "cut.txt"
    for n in range(0, len(data), 7):
        cut.write_bytes(data[:n])
        assert lightgbm_model_problem(cut) is not None, n
    cut.write_bytes(data[:-1])  # LightGBM itself loads this one without a word
    assert "pandas_categorical" in lightgbm_model_problem(cut)


@pytest.mark.slow
def test_the_stacker_gets_in_inference_the_features_it_was_trained_on(artifacts_copy, trained_output, demo_input):
    """05 rebuilds the stacker's inputs (text features from the saved vocabulary, prompt clusters from the
    saved assigner, per-prompt standardisation from the saved statistics) exactly as 04 built them, with every
    test essay taken as other-origin."""
    folder, _ = demo_input
    spec_file = artifacts_copy / "ensemble" / "artifacts" / "ensemble.json"
    spec = json.loads(spec_file.read_text())
    assert spec["prompt_features"] and spec["text_features"]
    spec["selected"], spec["thresholds"] = "stacker", spec["methods"]["stacker"]["thresholds"]
    spec_file.write_text(json.dumps(spec))
    artifacts = ArtifactSet.open(artifacts_copy)
    oofs = load_oof_predictions(trained_output / "train", trained_output / "prepare" / "folds.parquet",
                                artifacts.models)
    texts = oofs.folds[["essay_id"]].merge(pd.read_csv(folder / "train.csv"), on="essay_id")["full_text"].tolist()
    continuous, scores = ensemble_scores(artifacts, ModelPredictions(oofs.preds, oofs.probs, {}), texts)

    prompts = PromptAssigner(seed=42).fit(texts, oofs.folds["prompt_cluster"].to_numpy()).predict(texts)
    assert spec["by_origin"] and "origin__other" in spec["feature_columns"]
    plain = stacker_features(oofs.preds, oofs.probs, TextFeaturizer().fit(texts).transform(texts),
                             origin_other=oofs.other)
    X = stacker_features(oofs.preds, oofs.probs, TextFeaturizer().fit(texts).transform(texts), prompts,
                         fit_prompt_stats(plain, prompts, np.unique(oofs.folds["prompt_cluster"])),
                         origin_other=np.ones(len(texts)))
    assert list(X.columns) == spec["feature_columns"]
    stacker = LGBMStacker.load(artifacts_copy / "ensemble" / "artifacts")
    np.testing.assert_allclose(continuous, stacker.predict(X), rtol=0, atol=1e-9)
    assert set(np.unique(scores)) <= set(range(1, 7))

    (artifacts_copy / "ensemble" / "artifacts" / "prompt_assigner.npz").unlink()
    with pytest.raises(ArtifactError, match=r"prompt_assigner\.npz"):
        ArtifactSet.open(artifacts_copy)


@pytest.mark.slow
def test_bad_thresholds_are_refused(artifacts_copy):
    spec_file = artifacts_copy / "ensemble" / "artifacts" / "ensemble.json"
    spec = json.loads(spec_file.read_text())
    spec["thresholds"] = spec["thresholds"][::-1]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="5 increasing cut points"):
        ArtifactSet.open(artifacts_copy)


@pytest.mark.slow
def test_empty_and_enormous_essays_are_scored(artifacts_copy, demo_input, tmp_path):
    folder, _ = demo_input
    test = pd.read_csv(folder / "test.csv").head(6)
    test.loc[0, "full_text"] = ""
    test.loc[1, "full_text"] = "word " * 50_000
    inputs = tmp_path / "in"
    write_csvs(inputs, test, pd.DataFrame({"essay_id": test["essay_id"], "score": 3}))
    result = run_cli("05_infer", f"paths.input={inputs}", f"paths.output={tmp_path / 'out'}",
                     f"infer.artifacts={artifacts_copy}")
    assert result.returncode == 0, result.stderr[-3000:]
    submission = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert submission["essay_id"].tolist() == test["essay_id"].tolist()
    assert submission["score"].between(1, 6).all()


@pytest.mark.slow
def test_runtime_estimate_counts_every_fold_model(trained_output):
    artifacts = ArtifactSet.open(trained_output)
    small = estimate_runtime(artifacts, 400, 8000, 100.0, 9.0)
    assert small["n_fold_models"] == 13 and small["within_limit"]  # 2 seeds x 4 folds, 4 folds + a full fit
    assert small["this_device_hours"] == pytest.approx(8000 * 13 / 100 / 3600)
    assert estimate_runtime(artifacts, 400, 8000, 0.01, 9.0)["within_limit"] is False


# ------------------------------------------------------------------------------------------------
# Kaggle packaging


@pytest.mark.slow
def test_kaggle_bundle_runs_as_a_notebook_on_a_fake_kaggle_with_the_network_blocked(trained_output, demo_input,
                                                                                      tmp_path):
    import nbformat

    from common.tools.kaggle import build_bundle

    folder, _ = demo_input
    params = load_params(REPO / "params.yaml", [f"paths.input={folder}", f"paths.output={trained_output}",
                                                "infer.kaggle_user=someone"])
    bundle = build_bundle(params, tmp_path / "bundle", wheels=False)
    kernel = json.loads((bundle / "notebook" / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["dataset_sources"] == ["someone/aes-pipeline-artifacts"]
    assert kernel["competition_sources"] == ["learning-agency-lab-automated-essay-scoring-2"]
    dataset = bundle / "dataset"
    assert json.loads((dataset / "dataset-metadata.json").read_text())["id"] == "someone/aes-pipeline-artifacts"
    for module in ("artifacts", "inference", "submission", "runtime", "infer_stage"):
        assert (dataset / "code" / "common" / "infer" / f"{module}.py").is_file(), module
    for left_out in ("tools", "train", "pseudo", "ensemble/search.py", "ensemble/selection.py", "ensemble/target.py",
                     "ensemble/tuning.py", "ensemble/ensemble_stage.py"):  # inference runs without them
        assert not (dataset / "code" / "common" / left_out).exists(), left_out
    assert not list(dataset.rglob("oof.parquet")) and not list(dataset.rglob("__pycache__"))
    shipped = {name: sorted(p.name for p in (dataset / "train" / name / "folds").iterdir())
               for name in ("tiny-regression", "tiny-ordinal")}
    assert shipped == {"tiny-regression": sorted(f"fold_{k}{s}" for k in range(4) for s in ("", "_seed7")),
                       "tiny-ordinal": ["fold_0", "fold_1", "fold_2", "fold_3", "full"]}
    assert "kaggle datasets create" in (bundle / "UPLOAD.md").read_text()

    # The fake Kaggle: competition files and the dataset under <root>/input, a working folder.
    root = tmp_path / "kaggle"
    competition = root / "input" / "learning-agency-lab-automated-essay-scoring-2"
    competition.mkdir(parents=True)
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy(folder / name, competition / name)
    shutil.copytree(dataset, root / "input" / "aes-pipeline-artifacts")
    (root / "working").mkdir()
    book = nbformat.read(str(bundle / "notebook" / "aes-pipeline-infer.ipynb"), as_version=4)
    code = "\n\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
    script = tmp_path / "notebook_as_script.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env["AES_KAGGLE_ROOT"] = str(root)
    result = subprocess.run([sys.executable, "-c", NO_NETWORK, str(script)], cwd=root / "working", env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"common loaded from {root / 'input' / 'aes-pipeline-artifacts' / 'code' / 'common'}" in result.stdout
    assert "transformers" in result.stdout and "needs >=" in result.stdout  # the version report
    submission = pd.read_csv(root / "working" / "submission.csv")
    local = run_cli("05_infer", f"paths.input={folder}", f"paths.output={tmp_path / 'local'}",
                    f"infer.artifacts={trained_output}")
    assert local.returncode == 0, local.stderr[-2000:]
    pd.testing.assert_frame_equal(submission, pd.read_csv(tmp_path / "local" / "submission.csv"))


@pytest.mark.slow
def test_the_kaggle_bundle_ships_only_what_05_reads_and_nothing_of_this_machine(trained_output, demo_input, tmp_path,
                                                                                monkeypatch):
    import common.tools.kaggle as kaggle

    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(trained_output, out, symlinks=True)
    fold = out / "train" / "tiny-regression" / "folds" / "fold_0"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the upload\n")
    (fold / "notes.txt").symlink_to(secret)
    (fold / "scratch.bin").write_bytes(b"stray")
    (out / "ensemble" / "artifacts" / "draft.json").write_text("{}")
    repo = tmp_path / "repo"  # the working tree as a user's may be: a stray .env beside the library
    shutil.copytree(REPO / "common", repo / "common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "05_infer", repo / "05_infer")
    (repo / "common" / ".env").write_text("TOKEN=not-for-the-upload\n")
    monkeypatch.setattr(kaggle, "REPO", repo)
    params = load_params(REPO / "params.yaml", [f"paths.input={folder}", f"paths.output={out}",
                                                "infer.kaggle_user=someone"])
    dataset = kaggle.build_bundle(params, tmp_path / "bundle", wheels=False) / "dataset"
    shipped = dataset / "train" / "tiny-regression" / "folds" / "fold_0"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(
        ["backbone", "model.safetensors", "scorer.json", "train_config.json",
         *(p.name for p in fold.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "spm", "added")))])
    assert sorted(p.name for p in (dataset / "ensemble" / "artifacts").iterdir()) == sorted(
        p.name for p in (trained_output / "ensemble" / "artifacts").iterdir())  # no draft.json
    assert not list(dataset.rglob(".env")) and not [p for p in dataset.rglob("*") if p.is_symlink()]
    for path in (p for p in dataset.rglob("*") if p.suffix in (".json", ".yaml", ".py")):
        text = path.read_text(encoding="utf-8")
        assert str(tmp_path) not in text and str(trained_output) not in text, path  # no path of this machine
    assert yaml.safe_load((dataset / "code" / "params.yaml").read_text())["paths"]["output"] == "output"

    (fold / "notes.txt").unlink()
    (fold / "tokenizer_config.json").unlink()
    (fold / "tokenizer_config.json").symlink_to(trained_output / "train" / "tiny-regression" / "folds" / "fold_0"
                                                / "tokenizer_config.json")
    with pytest.raises(PipelineError, match=r"tokenizer_config.json leads to .*outside .*fold_0: make kaggle ships "
                                            "nothing from elsewhere"):
        kaggle.build_bundle(params, tmp_path / "bundle", wheels=False)


def test_the_notebook_fails_clearly_when_a_library_is_too_old(tmp_path):
    from common.tools.kaggle import setup_cell

    dataset = tmp_path / "input" / "aes-pipeline-artifacts"
    (dataset / "wheels").mkdir(parents=True)
    (dataset / "requirements.json").write_text(json.dumps({"numpy": "999.0"}))
    script = tmp_path / "setup.py"
    script.write_text(setup_cell("aes-pipeline-artifacts"))
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, "AES_KAGGLE_ROOT": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "this Kaggle image lacks numpy (found" in result.stderr and "needs >= 999.0" in result.stderr


@pytest.mark.slow
def test_several_devices_share_the_batches_and_agree_with_one(trained_output, demo_input):
    # Two "devices" (both the CPU here; two GPUs on Kaggle) each take every other batch on its own thread.
    folder, _ = demo_input
    texts = pd.read_csv(folder / "test.csv")["full_text"].tolist()
    fold_dir = ArtifactSet.open(trained_output).fold_dirs["tiny-ordinal"][1]
    ids, collator = TokenCache(texts).get(fold_dir)
    one, one_probs = predict_fold_model(fold_dir, ids, collator, [torch.device("cpu")], "auto", batch_tokens=256)
    two, two_probs = predict_fold_model(fold_dir, ids, collator, [torch.device("cpu")] * 2, "auto", batch_tokens=256)
    np.testing.assert_allclose(two, one, atol=1e-6, rtol=0)
    np.testing.assert_allclose(two_probs, one_probs, atol=1e-6, rtol=0)


def test_a_lora_models_base_backbone_travels_with_the_bundle(tmp_path, monkeypatch):
    from common.models import EssayScorer, ScorerConfig
    from common.tools.kaggle import _ship_lora_base

    monkeypatch.chdir(REPO)  # the model names its base relative to where it was trained
    torch.manual_seed(0)
    model = EssayScorer(ScorerConfig(backbone="input/tiny-deberta-v2", head="classification", lora_r=4))
    with torch.no_grad():
        model.head.fc.weight.normal_()  # a trained-looking head: a re-initialised one would differ
    src = tmp_path / "run" / "train" / "m" / "folds" / "fold_0"
    model.save(src)
    dataset = tmp_path / "dataset"
    dst = dataset / "train" / "m" / "folds" / "fold_0"
    shutil.copytree(src, dst)
    _ship_lora_base(src, dst, dataset, {})
    assert (dataset / "backbones" / "base_0" / "config.json").is_file()
    assert json.loads((dst / "scorer.json").read_text())["backbone"] == "../../../../backbones/base_0"

    ids = torch.randint(5, 1000, (3, 20))
    mask = torch.ones_like(ids)
    expected, _ = model.predict(ids, mask)
    monkeypatch.chdir(tmp_path)  # elsewhere: input/tiny-deberta-v2 no longer resolves from here
    moved = tmp_path / "mounted"
    shutil.move(str(dataset), moved)  # Kaggle mounts the dataset wherever it likes
    got, _ = EssayScorer.load(moved / "train" / "m" / "folds" / "fold_0").predict(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_05s_outputs_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """A full disk while writing test_predictions.parquet: no new submission beside the old predictions."""
    import errno

    from common.core.io import WriteFailed
    from common.infer.submission import write_outputs

    infer = tmp_path / "infer"
    infer.mkdir()
    (tmp_path / "submission.csv").write_text("old submission\n")
    (infer / "test_predictions.parquet").write_text("old predictions")
    submission = pd.DataFrame({"essay_id": ["a"], "score": [3]})
    predictions = pd.DataFrame({"essay_id": ["a"], "m": [3.1]})

    def disk_full(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", disk_full)
        with pytest.raises(WriteFailed, match=r"test_predictions\.parquet: could not be written"):
            write_outputs(tmp_path / "submission.csv", submission, infer, {"n": 1}, predictions)
    assert (tmp_path / "submission.csv").read_text() == "old submission\n"
    assert sorted(p.name for p in infer.iterdir()) == ["test_predictions.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infer", "submission.csv"]  # no staging left behind
    write_outputs(tmp_path / "submission.csv", submission, infer, {"n": 1}, predictions)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "submission.csv"), submission)
    pd.testing.assert_frame_equal(pd.read_parquet(infer / "test_predictions.parquet"), predictions)
    assert json.loads((infer / "metrics.json").read_text()) == {"n": 1}
