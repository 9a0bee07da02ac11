"""dvc.yaml and params.yaml agree: the per-(model, fold) training stages, the OOF stages and their deps."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.config import ParamsError, TrainParams, load_params

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_and_dvc_yaml_agree():
    params = load_params(REPO / "params.yaml")
    names = [m.name for m in params.train.models]
    assert sorted([*params.train.dvc_models, *params.train.dvc_students]) == sorted(names)
    assert params.train.dvc_folds == list(range(params.prepare.n_folds))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for collect in ("oof", "student_oof"):
        fold_deps = [d for d in stages[collect]["do"]["deps"] if "/fold_" in d]
        assert fold_deps == [f"${{paths.output}}/train/${{item}}/fold_{k}" for k in params.train.dvc_folds]
    assert stages["train"]["matrix"] == {"model": "${train.dvc_models}", "fold": "${train.dvc_folds}"}
    assert stages["student"]["matrix"] == {"model": "${train.dvc_students}", "fold": "${train.dvc_folds}"}
    assert "${paths.output}/pseudo" in stages["student"]["deps"]
    assert "${paths.output}/pseudo" not in stages["train"]["deps"]  # teachers never wait on their own labels


def test_dvc_lists_one_training_stage_per_model_and_fold():
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    stages = set(listed.stdout.split())
    params = load_params(REPO / "params.yaml")
    for name in params.train.dvc_models:
        assert f"oof@{name}" in stages
        for fold in params.train.dvc_folds:
            assert f"train@{name}-{fold}" in stages
    for name in params.train.dvc_students:
        assert f"student_oof@{name}" in stages
        for fold in params.train.dvc_folds:
            assert f"student@{name}-{fold}" in stages
    assert {"mlm", "pseudo_label"} <= stages


@pytest.mark.parametrize("dvc_models, message", [
    (["tiny-regression"], "missing ['tiny-ordinal']"),
    (["tiny-regression", "tiny-ordinal", "other"], "unknown ['other']"),
    (["tiny-regression", "tiny-ordinal", "tiny-ordinal"], "listed twice"),
])
def test_dvc_models_must_match_the_models(dvc_models, message):
    with pytest.raises(ParamsError, match=r"train\.dvc_models") as info:
        TrainParams(dvc_models=dvc_models)
    assert message in str(info.value)
    TrainParams(dvc_models=["tiny-ordinal", "tiny-regression"])  # order is free


def test_students_and_teachers_sit_on_their_own_side():
    with pytest.raises(ParamsError, match="wrong side"):
        TrainParams(dvc_models=["tiny-regression", "tiny-ordinal", "tiny-student"], dvc_students=[])
    with pytest.raises(ParamsError, match="teacher"):
        load_params(REPO / "params.yaml", ["pseudo.teacher=tiny-student"])
    with pytest.raises(ParamsError, match=r"not in train\.models"):
        load_params(REPO / "params.yaml", ["pseudo.teacher=nobody"])
