"""dvc.yaml and params.yaml together: one stage per model, each stale only when its own params change,
a hub backbone that plans, no pseudo-label stage without a student, the fold count in one place."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config.loader import load_params

REPO = Path(__file__).resolve().parents[1]


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """dvc in `cwd`, its stages run by this interpreter on the code in `cwd` (as make demo runs them)."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


LOCK_EVERY_STAGE = """
from dvc.repo import Repo
repo = Repo(".")
with repo.lock:
    for stage in repo.index.stages:
        stage.save(allow_missing=True, run_cache=False)  # params and code as they are now; no output yet
        stage.dump(update_pipeline=False)
"""


@pytest.fixture(scope="module")
def locked_repository(tmp_path_factory):
    """The repository's files in a fresh git repository, with a dvc.lock recording today's params: built once per
    module (dvc's own start takes seconds), copied for each test by `repo_copy`."""
    folder = tmp_path_factory.mktemp("locked-repository")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and name != "dvc.lock":
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    locked = subprocess.run([sys.executable, "-c", LOCK_EVERY_STAGE], cwd=folder, capture_output=True, text=True,
                            timeout=300)
    assert locked.returncode == 0, locked.stderr[-2000:]
    shutil.rmtree(folder / ".dvc" / "tmp", ignore_errors=True)  # dvc's locks and state of that folder, not a copy's
    return folder


@pytest.fixture
def repo_copy(locked_repository, tmp_path):
    """A test's own copy of `locked_repository` (tests edit params.yaml and inputs, and run stages in it)."""
    shutil.copytree(locked_repository, tmp_path, symlinks=True, dirs_exist_ok=True)
    return tmp_path


def edit_params(folder: Path, edit) -> None:
    path = folder / "params.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def stages_with_changed_params(folder: Path) -> dict[str, set[str]]:
    """Stage name -> the params dvc status reports as changed against dvc.lock."""
    status = dvc(folder, "status", "--json")
    assert status.returncode == 0, status.stderr
    changed: dict[str, set[str]] = {}
    for stage, entries in json.loads(status.stdout or "{}").items():
        for entry in entries:
            for params in (entry.get("changed deps", {}) or {}).values() if isinstance(entry, dict) else []:
                if isinstance(params, dict):
                    changed.setdefault(stage, set()).update(params)
    return changed


def test_one_stage_per_model_and_student():
    listed = dvc(REPO, "stage", "list", "--name-only")
    assert listed.returncode == 0, listed.stderr
    stages = set(listed.stdout.split())
    params = load_params(REPO / "params.yaml")
    assert {f"train@{name}" for name in params.train.models} <= stages
    assert {f"pseudo_label@{name}" for name in params.train.students} <= stages
    assert {f"student@{name}" for name in params.train.students} <= stages
    assert not [s for s in stages if s.startswith(("mlm", "oof"))]  # MLM runs inside its model's stage


def test_the_fold_count_lives_in_prepare_only():
    text = (REPO / "dvc.yaml").read_text()
    assert "fold_0" not in text and "dvc_folds" not in text and "dvc_models" not in text
    stages = yaml.safe_load(text)["stages"]
    for group in ("train", "student"):
        outs = stages[group]["do"]["outs"]
        assert {"${paths.output}/train/${key}/folds": {"persist": True}} in outs
        assert "prepare.n_folds" in stages[group]["do"]["params"]


def test_editing_one_model_stales_only_that_model(repo_copy):
    before = stages_with_changed_params(repo_copy)
    assert not any(before.values())
    edit_params(repo_copy, lambda d: d["train"]["models"]["tiny-ordinal"].update(lr=0.001))
    after = stages_with_changed_params(repo_copy)
    newly = {stage for stage, keys in after.items() if keys - before.get(stage, set())}
    assert "train@tiny-ordinal" in newly
    assert not {s for s in newly if s.startswith(("train@", "student@", "pseudo_label@"))} - {"train@tiny-ordinal"}
    assert after["train@tiny-ordinal"] - before.get("train@tiny-ordinal", set()) == {"train.models.tiny-ordinal"}

    edit_params(repo_copy, lambda d: d["pseudo"].update(regression_sigma=0.9))
    again = stages_with_changed_params(repo_copy)
    newly = {stage for stage, keys in again.items() if keys - after.get(stage, set())}
    assert newly == {f"pseudo_label@{name}" for name in load_params(repo_copy / "params.yaml").train.students}


def test_a_hub_backbone_is_a_param_not_a_path(repo_copy):
    def hub(data):
        data["backbone"] = "microsoft/deberta-v3-large"
        data["train"]["models"]["tiny-regression"]["backbone"] = "microsoft/deberta-v3-base"
    edit_params(repo_copy, hub)
    status = dvc(repo_copy, "status", "--json")
    assert status.returncode == 0 and "microsoft" not in status.stdout.replace("train.models", "")
    assert {"backbone"} <= stages_with_changed_params(repo_copy)["train@tiny-regression"]
    prepared = dvc(repo_copy, "repro", "prepare")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    dry = dvc(repo_copy, "repro", "--dry", "train@tiny-regression")
    assert dry.returncode == 0, dry.stderr
    assert "python 02_train/run.py train.model=tiny-regression" in dry.stdout


def test_without_students_no_pseudo_label_stage_runs(repo_copy):
    edit_params(repo_copy, lambda d: d["train"].update(students={}))
    listed = dvc(repo_copy, "stage", "list", "--name-only")
    assert listed.returncode == 0, listed.stderr
    assert not [s for s in listed.stdout.split() if s.startswith(("pseudo_label", "student"))]
    dry = dvc(repo_copy, "repro", "--dry", "--force")  # --force: plan every stage, none has run yet
    assert dry.returncode == 0, dry.stderr
    assert "01_pseudo_label" not in dry.stdout and "train.model=tiny-regression" in dry.stdout


def test_a_second_round_of_pseudo_labels_unrolls_from_params(repo_copy):
    """A student as teacher: its pseudo_label stage waits for the first-round student's folds."""
    def second_round(data):
        first = data["train"]["students"]["tiny-student"]
        data["train"]["students"]["tiny-student-r2"] = {**first, "teacher": "tiny-student"}
    edit_params(repo_copy, second_round)
    dry = dvc(repo_copy, "repro", "--dry", "--force")
    assert dry.returncode == 0, dry.stderr
    order = [line.split("'")[1] for line in dry.stdout.splitlines() if line.startswith("Running stage")]
    chain = ["train@tiny-regression", "pseudo_label@tiny-student", "student@tiny-student",
             "pseudo_label@tiny-student-r2", "student@tiny-student-r2"]
    assert [stage for stage in order if stage in chain] == chain


def test_the_competition_params_plan(repo_copy):
    shutil.copy(REPO / "params" / "competition.yaml", repo_copy / "params.yaml")
    edit_params(repo_copy, lambda d: d["paths"].update(input="input", output="runs/first"))
    dry = dvc(repo_copy, "repro", "--dry", "--force")
    assert dry.returncode == 0, dry.stderr
    params = load_params(repo_copy / "params.yaml")
    for name in params.train.all_models:
        assert f"train.model={name}" in dry.stdout


def test_a_failing_stage_under_dvc_keeps_the_last_good_output(repo_copy):
    prepared = dvc(repo_copy, "repro", "prepare")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    out = repo_copy / "output" / "prepare"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {Path("folds.parquet"), Path("metrics.json")} <= set(before) and any(p.suffix == ".png" for p in before)
    train = repo_copy / "input" / "train.csv"
    train.write_text(train.read_text().replace(",3\n", ",seven\n", 1))  # a score that is not 1-6
    failed = dvc(repo_copy, "repro", "prepare")
    assert failed.returncode != 0 and "score is not an integer at row 1" in failed.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_every_metrics_file_is_git_tracked_so_experiments_hold_it():
    """dvc exp show reads the metrics an experiment commits: none may live in the git-ignored output folder."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [next(iter(entry)) if isinstance(entry, dict) else entry
                for stage in stages.values() for entry in stage.get("do", stage).get("metrics", [])]
    assert declared and all(path.startswith("${paths.metrics}/") for path in declared), declared
    resolved = [p.replace("${paths.metrics}", params["paths"]["metrics"]).replace("${key}", "tiny-regression")
                for p in declared]
    ignored = subprocess.run(["git", "check-ignore", *resolved], cwd=REPO, capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, ignored.stdout  # 1: none of them is ignored
    tracked = subprocess.run(["git", "ls-files", "--", *resolved], cwd=REPO, capture_output=True, text=True).stdout
    assert sorted(tracked.split()) == sorted(set(resolved))  # the demo's figures are committed with it


def test_a_symlinked_venv_is_ignored(tmp_path):
    """.venv may be a link to a shared environment (ln -s ~/venvs/aes .venv): git must ignore it as it does the
    folder `make` creates (a `.venv/` pattern matches folders only)."""
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".venv").symlink_to(tmp_path / "elsewhere")
    ignored = subprocess.run(["git", "check-ignore", ".venv"], cwd=tmp_path, capture_output=True, text=True)
    assert ignored.returncode == 0, "a .venv symlink is not ignored: .gitignore needs `.venv`, not `.venv/`"

def plots_copy(folder: Path) -> Path:
    """What `dvc plots show` reads (dvc.yaml, params.yaml, the dvc config and templates) in a fresh git repository."""
    from common.tools.offline_plots import write_offline_page

    for name in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots/by_unit.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, folder / name)
    write_offline_page(folder / ".dvc" / "plots" / "offline.html")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    return folder


def write_png(path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(2, 2))
    fig.savefig(path)
    plt.close(fig)


def test_dvc_plots_show_of_a_run_without_students_misses_no_plot(tmp_path):
    """The pseudo-label plots are the pseudo_label stages' outputs: no student, no stage, no plot missing."""
    edit_params(plots_copy(tmp_path), lambda d: d["train"].update(students={}))
    out = tmp_path / "output"
    for folder in ("prepare/plots", "thresholds/plots", "ensemble/plots"):  # every plot a finished run makes
        write_png(out / folder / "shares.png")
    (out / "curves" / "tiny-regression").mkdir(parents=True)
    (out / "curves" / "tiny-regression" / "eval_qwk.tsv").write_text("step\tunit\teval_qwk\n1\tfold_0\t0.5\n")
    shown = dvc(tmp_path, "plots", "show", "-o", "dvc_plots")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "failed to load" not in shown.stdout + shown.stderr, shown.stdout + shown.stderr


def test_dvc_plots_show_renders_a_students_pseudo_label_plots(tmp_path):
    plots_copy(tmp_path)
    student = next(iter(load_params(tmp_path / "params.yaml").train.students))
    write_png(tmp_path / "output" / "plots" / "pseudo" / student / "distribution.png")
    shown = dvc(tmp_path, "plots", "show", "-o", "dvc_plots")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"plots/pseudo/{student}/distribution.png" in (tmp_path / "dvc_plots" / "index.html").read_text()


def test_dvc_plots_show_renders_offline_with_one_line_per_fold(tmp_path):
    plots_copy(tmp_path)
    curves = tmp_path / "output" / "curves" / "tiny-regression"
    curves.mkdir(parents=True)
    (curves / "eval_qwk.tsv").write_text("step\tunit\teval_qwk\n1\tfold_0\t0.5\n2\tfold_0\t0.6\n1\tfold_1\t0.4\n"
                                         "2\tfold_1\t0.7\n")
    shown = dvc(tmp_path, "plots", "show", "-o", "dvc_plots")
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "<script src=" not in page and "cdn.jsdelivr" not in page  # nothing to fetch
    spec = json.loads(page.split("var spec = ", 1)[1].split(";\n", 1)[0])
    assert spec["encoding"]["color"]["field"] == "unit"  # the by_unit template: one line per fold
    assert {row["unit"] for row in spec["data"]["values"]} == {"fold_0", "fold_1"}
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        pytest.skip("no chromium/chromium-browser/google-chrome on PATH: apt-get install chromium to render it")
    rendered = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                               "--enable-logging=stderr", "--v=0", "--dump-dom",
                               (tmp_path / "dvc_plots" / "index.html").as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert "<canvas" in rendered.stdout or "<svg" in rendered.stdout, rendered.stderr[-2000:]
    errors = [line for line in rendered.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
    assert not errors, errors


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """make in `folder` with this checkout's installed environment, never installing it again (`-o` its stamp):
    an install from the copy would point the environment's editable `common` at the copy."""
    venv = Path(sys.executable).parents[1]
    return subprocess.run(["make", "-s", "-o", f"{venv}/.installed", *args, f"VENV={venv}"], cwd=folder,
                          capture_output=True, text=True, timeout=600)


def test_make_competition_takes_a_preset_and_overrides_and_make_report_follows_paths_output(repo_copy, tmp_path):
    """A first try on data without the corpus: the fix the message names works through make competition."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy(REPO / "input" / name, data / name)
    args = [f"DATA={data}", "PRESET=first-try", "OUT=runs/try", "STAGES=prepare"]
    stamp = Path(sys.executable).parents[1] / ".installed"
    installed = stamp.stat().st_mtime_ns if stamp.exists() else None
    os.utime(repo_copy / "pyproject.toml")  # edited after the install: make's rule would install from the copy
    refused = make(repo_copy, "competition", *args)
    assert refused.returncode != 0 and "ARGS=prepare.external_file=" in refused.stderr
    tiny = REPO / "input" / "tiny-deberta-v2"
    done = make(repo_copy, "competition", *args, f"ARGS=prepare.external_file= backbone={tiny} train.device=cpu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    params = load_params(repo_copy / "params.yaml")
    assert params.paths.output == "runs/try" and params.prepare.n_folds == 2 and params.backbone == str(tiny)
    assert list(params.train.models) == ["deberta-v3-base-first-try"] and not params.train.students
    assert params.train.models["deberta-v3-base-first-try"].max_length == 256
    text = (repo_copy / "params.yaml").read_text()
    assert "# One fold per GPU at once" in text and len(text.splitlines()) < 50  # commented, only what differs
    folds = __import__("pandas").read_parquet(repo_copy / "runs" / "try" / "prepare" / "folds.parquet")
    assert sorted(folds["fold"].unique()) == [0, 1]
    assert (repo_copy / "runs" / "try" / "report" / "index.html").is_file()
    dry = dvc(repo_copy, "repro", "--dry", "--force")  # the whole DAG plans from the written file
    assert dry.returncode == 0 and "02_train/run.py train.model=deberta-v3-base-first-try" in dry.stdout, dry.stderr
    (repo_copy / "runs" / "try" / "report" / "index.html").unlink()
    report = make(repo_copy, "report")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (repo_copy / "runs" / "try" / "report" / "index.html").is_file()
    other = make(repo_copy, "report", f"OUT={tmp_path / 'nothing'}")
    assert other.returncode != 0 and "nothing holds no run" in other.stderr
    assert (stamp.stat().st_mtime_ns if stamp.exists() else None) == installed  # the environment untouched
    assert not (repo_copy / ".venv").exists()
