"""Shared fixtures: a generated demo input folder and its 00_prepare output, built once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.tools.demo import DEMO_FILES, make_demo_frames

REPO = Path(__file__).resolve().parents[1]
BACKBONE = str(REPO / "input" / "tiny-deberta-v2")
"""The tiny demo backbone (tokenizer + random DeBERTa-v2) bundled in input/."""


def with_metrics_dir(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """`overrides` plus paths.metrics inside the run's paths.output (when one is given and paths.metrics is not):
    a test's stage run must not write the repository's git-tracked metrics/ folder."""
    overrides = list(overrides)
    output = [o.split("=", 1)[1] for o in overrides if o.startswith("paths.output=")]
    if output and not any(o.startswith("paths.metrics=") for o in overrides):
        overrides.append(f"paths.metrics={output[-1]}/exp_metrics")
    return overrides


def run_cli(stage: str, *overrides: str) -> subprocess.CompletedProcess:
    """Run a stage's run.py from the repository root, as a user would (headline metrics kept in the run's
    output folder: `with_metrics_dir`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, f"{stage}/run.py", *with_metrics_dir(overrides)], cwd=REPO, env=env, capture_output=True,
        text=True
    )


def _metrics_state() -> dict[str, int]:
    folder = REPO / "metrics"
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.is_dir() else {}


@pytest.fixture(scope="session", autouse=True)
def repository_metrics_untouched():
    """No test writes the repository's git-tracked metrics/ folder (what `dvc exp show` reads)."""
    before = _metrics_state()
    yield
    assert _metrics_state() == before, "a test wrote the repository's metrics/ folder: pass paths.metrics"


def fold_table(seed: int, n_train: int, n_corpus_only: int, n_folds: int = 3):
    """Demo frames and a train table (essay_id, score, fold, origin) with the train texts, for engine tests."""
    import numpy as np
    import pandas as pd

    from common.folds import make_folds

    frames = make_demo_frames(seed=seed, n_train=n_train, n_test=4, n_corpus_only=n_corpus_only)
    truth = frames["truth"].set_index("essay_id")
    train = frames["train"]
    origin = truth.loc[train["essay_id"], "origin"].to_numpy()
    folds = make_folds(train["score"].to_numpy(), np.arange(len(train)), np.zeros(len(train), int), origin,
                       n_folds=n_folds, seed=0)
    table = pd.DataFrame({"essay_id": train["essay_id"], "score": train["score"], "fold": folds, "origin": origin})
    return frames, table, train["full_text"].tolist()


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory):
    """A freshly generated demo (another seed than the bundled one) and the truth behind it."""
    folder = tmp_path_factory.mktemp("input")
    frames = make_demo_frames(seed=11, n_train=200, n_test=30, n_corpus_only=160)
    for key, name in DEMO_FILES.items():
        frames[key].to_csv(folder / name, index=False)
    return folder, frames["truth"]


@pytest.fixture(scope="session")
def prepared_output(demo_input, tmp_path_factory):
    """An output folder holding 00_prepare's results on `demo_input`."""
    folder, _ = demo_input
    out = tmp_path_factory.mktemp("output")
    result = run_cli("00_prepare", f"paths.input={folder}", f"paths.output={out}")
    assert result.returncode == 0, result.stderr
    return out


ONE_EPOCH = "stages=[{rows: all, epochs: 1.0}]"
TINY_TRAIN = ["train.models.tiny-regression.max_length=64", f"train.models.tiny-regression.{ONE_EPOCH}",
              "train.models.tiny-ordinal.max_length=64", f"train.models.tiny-ordinal.{ONE_EPOCH}", "train.device=cpu"]


NO_STUDENTS = "train.students={}"
"""The models of `trained_output` are params.yaml's without its student (03 and 04 read the models params names)."""

DEMO_MEMBERS = "ensemble.models=[tiny-regression,tiny-ordinal]"
"""The ensemble of `trained_output`: the two transformer models it trains (params.yaml's tiny-tfidf is left out)."""


@pytest.fixture(scope="session")
def trained_output(demo_input, prepared_output, tmp_path_factory):
    """`prepared_output` plus both demo models trained briefly on every fold and the ensemble on them."""
    import shutil

    folder, _ = demo_input
    out = tmp_path_factory.mktemp("trained")
    shutil.copytree(prepared_output / "prepare", out / "prepare")
    common = [f"paths.input={folder}", f"paths.output={out}"]
    for model in ("tiny-regression", "tiny-ordinal"):
        trained = run_cli("02_train", *common, *TINY_TRAIN, f"train.model={model}")
        assert trained.returncode == 0, trained.stderr[-3000:]
    ensembled = run_cli("04_ensemble", *common, "ensemble.n_trials=2", NO_STUDENTS, DEMO_MEMBERS)
    assert ensembled.returncode == 0, ensembled.stderr[-3000:]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out
