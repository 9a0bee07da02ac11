"""Shared fixtures: a generated demo input folder, its 00_prepare output and briefly trained models, built once
per test run (under pytest-xdist, once for all workers)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: `make test` runs a worker per core
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import contextlib
import functools
import importlib.util
import io
import logging
import shutil
import subprocess
import sys
import traceback
import types
from pathlib import Path

import pytest
from filelock import FileLock

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


def run_cli_process(stage: str, *overrides: str) -> subprocess.CompletedProcess:
    """Run a stage's run.py in a new python from the repository root, exactly as a user would (headline metrics
    kept in the run's output folder: `with_metrics_dir`). Each stage's command line is tested this way once;
    the other stage runs go through `run_cli`, which skips the seconds of imports a new process costs."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, f"{stage}/run.py", *with_metrics_dir(overrides)], cwd=REPO, env=env, capture_output=True,
        text=True
    )


@functools.cache
def _stage_module(stage: str) -> types.ModuleType:
    """`stage`/run.py (or `01_pseudo_label/mlm` -> its mlm.py) loaded once, under a name of its own."""
    script = REPO / (stage if stage.endswith(".py") else f"{stage}/run.py")
    spec = importlib.util.spec_from_file_location(f"stage_{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(stage: str, *overrides: str) -> subprocess.CompletedProcess:
    """What `run_cli_process` returns, from the same stage entry point (`common.config.stage.run_stage`, as
    `exit_with` calls it) run in this process: return code, stdout and stderr (the stage's log) captured. An
    exception the stage lets out becomes its traceback on stderr and return code 1, as in a process."""
    from common.config.stage import run_stage

    module = _stage_module(stage)
    argv = with_metrics_dir(overrides)
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_stage(module.main, module.__doc__, argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return subprocess.CompletedProcess([stage, *argv], code, out.getvalue(), err.getvalue())


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

    from common.prepare.folds import make_folds

    frames = make_demo_frames(seed=seed, n_train=n_train, n_test=4, n_corpus_only=n_corpus_only)
    truth = frames["truth"].set_index("essay_id")
    train = frames["train"]
    origin = truth.loc[train["essay_id"], "origin"].to_numpy()
    folds = make_folds(train["score"].to_numpy(), np.arange(len(train)), np.zeros(len(train), int), origin,
                       n_folds=n_folds, seed=0)
    table = pd.DataFrame({"essay_id": train["essay_id"], "score": train["score"], "fold": folds, "origin": origin})
    return frames, table, train["full_text"].tolist()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run: the first pytest-xdist worker to ask builds
    it (the others wait on a lock), so every worker's tests read the same files. A build that fails leaves no
    folder marked built, and the next worker to ask builds it again (and fails the same way)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder, built = root / f"shared-{name}", root / f"shared-{name}.built"
    with FileLock(root / f"shared-{name}.lock"):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            built.touch()
    return folder


DEMO_SEED = dict(seed=11, n_train=200, n_test=30, n_corpus_only=160)


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory):
    """A freshly generated demo (another seed than the bundled one) and the truth behind it."""
    frames = make_demo_frames(**DEMO_SEED)

    def build(folder: Path) -> None:
        for key, name in DEMO_FILES.items():
            frames[key].to_csv(folder / name, index=False)

    return built_once(tmp_path_factory, "input", build), frames["truth"]


@pytest.fixture(scope="session")
def prepared_output(demo_input, tmp_path_factory):
    """An output folder holding 00_prepare's results on `demo_input`."""
    folder, _ = demo_input

    def build(out: Path) -> None:
        result = run_cli_process("00_prepare", f"paths.input={folder}", f"paths.output={out}")
        assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "output", build)


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
    folder, _ = demo_input

    def build(out: Path) -> None:
        shutil.copytree(prepared_output / "prepare", out / "prepare")
        common = [f"paths.input={folder}", f"paths.output={out}"]
        for model in ("tiny-regression", "tiny-ordinal"):
            trained = run_cli("02_train", *common, *TINY_TRAIN, f"train.model={model}")
            assert trained.returncode == 0, trained.stderr[-3000:]
        ensembled = run_cli("04_ensemble", *common, "ensemble.n_trials=2", NO_STUDENTS, DEMO_MEMBERS)
        assert ensembled.returncode == 0, ensembled.stderr[-3000:]
        shutil.rmtree(out / "checkpoints", ignore_errors=True)

    return built_once(tmp_path_factory, "trained", build)
