"""Tests for common/ensemble/ensemble_artifact.py: what 04 saves, 05 reads back, checks and applies exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.core.artifact_checks import ArtifactError, Problems
from common.ensemble.ensemble_artifact import ENSEMBLE_DIR, EnsembleArtifact
from common.ensemble.features import stacker_features
from common.ensemble.search import build_ensemble
from common.ensemble.target import Target
from tests.test_selection import synthetic_oofs, texts_for


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    oofs = synthetic_oofs(seed=2)
    texts = texts_for(oofs)
    result = build_ensemble(oofs, texts, Target("auto", (1.0, 4.0), True), "regression", 0, {}, 1,
                            prompt_features=True, n_draws=100)
    root = tmp_path_factory.mktemp("artifacts")
    EnsembleArtifact.from_result(result, oofs.names, [0, 1, 2, 3]).save(root / ENSEMBLE_DIR)
    return oofs, texts, result, root


def select(root, name: str) -> dict:
    """ensemble.json of `root` with `name` selected (and its thresholds), as 04 would have written it."""
    spec = EnsembleArtifact.read_spec(root)
    spec["selected"], spec["thresholds"] = name, spec["methods"][name]["thresholds"]
    return spec


def test_the_saved_files_and_fields(saved):
    _, _, result, root = saved
    folder = root / ENSEMBLE_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["ensemble.json", "prompt_assigner.npz", "stacker",
                                                         "text_vocabulary.json"]
    spec = json.loads((folder / "ensemble.json").read_text())
    assert spec["selected"] == result.selected and spec["thresholds"] == result.methods[result.selected].thresholds
    assert spec["methods"]["greedy"]["weights"] == result.methods["greedy"].combiner.model_weights
    assert spec["methods"]["stacker"]["weights"] is None and spec["methods"]["stacker"]["objective"] == "regression"
    assert set(spec["methods"]["stacker"]["params_per_fold"]) == {"0", "1", "2", "3"}
    assert "params_per_fold" not in spec["methods"]["mean"]


@pytest.mark.parametrize("name", ["mean", "greedy", "scipy", "per_prompt", "stacker"])
def test_every_method_predicts_in_05_what_its_fit_in_04_predicts(saved, name):
    oofs, texts, result, root = saved
    folder = root / ENSEMBLE_DIR
    spec = select(root, name)
    problems = Problems()
    EnsembleArtifact.check(folder, spec, problems)
    assert not problems, problems.lines
    artifact = EnsembleArtifact.load(folder, spec)
    continuous, scores = artifact.predict(oofs.preds, oofs.probs, texts)
    fitted = result.methods[name].combiner
    if fitted.uses_features:  # the test essays' features: the saved vocabulary, assigner and statistics, origin other
        prompts = result.prompt_assigner.predict(texts)
        inputs = stacker_features(oofs.preds, oofs.probs, result.featurizer.transform(texts), prompts,
                                  result.prompt_stats, np.ones(len(texts)))
        assert artifact.featurizer is not None and artifact.prompt_assigner is not None
    else:
        inputs = pd.DataFrame(oofs.preds)
        assert artifact.featurizer is None and artifact.prompt_assigner is None  # a blend needs neither
    np.testing.assert_array_equal(continuous, fitted.predict(inputs))
    assert np.array_equal(scores, np.searchsorted(spec["thresholds"], continuous, side="right") + 1)


def test_the_check_names_what_is_wrong(saved, tmp_path):
    _, _, _, root = saved
    folder = root / ENSEMBLE_DIR
    spec = select(root, "stacker")
    (tmp_path / "text_vocabulary.json").write_text('["a", ')
    problems = Problems()
    EnsembleArtifact.check(tmp_path, spec, problems)  # an empty folder but a cut vocabulary
    assert f"{tmp_path / 'stacker' / 'stacker.json'}: not found" in problems.lines
    assert any(line.startswith(f"{tmp_path / 'text_vocabulary.json'}: not valid JSON") for line in problems.lines)
    assert f"{tmp_path / 'prompt_assigner.npz'}: not found" in problems.lines
    for broken, message in (({"selected": "ridge"}, "selects method 'ridge', which this version does not know"),
                            ({"thresholds": [3, 2, 1]}, "'thresholds' must be 5 increasing cut points"),
                            ({"by_prompt": True, "thresholds_by_prompt": {"0": [1, 2]}},
                             "'thresholds_by_prompt' must map every prompt cluster to 5 increasing cut points"),
                            ({"selected": "greedy", "methods": {}}, "has no entry for the selected method 'greedy'")):
        problems = Problems()
        EnsembleArtifact.check(folder, {**select(root, "greedy"), **broken}, problems)
        assert any(message in line for line in problems.lines), problems.lines


def test_a_missing_or_garbled_ensemble_json_fails_with_the_fix(tmp_path):
    with pytest.raises(ArtifactError, match="not found: run 04_ensemble"):
        EnsembleArtifact.read_spec(tmp_path)
    (tmp_path / ENSEMBLE_DIR).mkdir(parents=True)
    (tmp_path / ENSEMBLE_DIR / "ensemble.json").write_text('{"models": ["a"]}')
    with pytest.raises(ArtifactError, match=r"(?s)lacks \['selected', 'thresholds'\].*re-run 04_ensemble"):
        EnsembleArtifact.read_spec(tmp_path)


def _artifact_root(saved, tmp_path, spec: dict):
    """A copy of the saved artifacts under tmp_path/root with `spec` as its ensemble.json."""
    import shutil

    _, _, _, root = saved
    copy = tmp_path / "root"
    shutil.copytree(root / ENSEMBLE_DIR, copy / ENSEMBLE_DIR)
    (copy / ENSEMBLE_DIR / "ensemble.json").write_text(json.dumps(spec))
    return copy


def test_member_and_model_paths_must_stay_inside_their_folders(saved, tmp_path):
    from common.infer.artifacts import ArtifactSet

    _, _, _, root = saved
    spec = select(root, "mean")
    elsewhere = tmp_path / "elsewhere" / "fold_0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "scorer.json").write_text('{"cut')  # read, it would be reported as not valid JSON
    model, other = spec["models"][:2]
    spec["members"] = {model: ["../../../../elsewhere/fold_0", "fold_1"], other: [str(elsewhere)]}
    copy = _artifact_root(saved, tmp_path, spec)
    linked = copy / "train" / spec["models"][2] / "folds"
    linked.mkdir(parents=True)
    (linked / "fold_0").symlink_to(elsewhere, target_is_directory=True)
    problems = Problems()
    dirs = EnsembleArtifact.member_dirs(copy, spec, [0, 1], problems)
    assert dirs[model] == [copy / "train" / model / "folds" / "fold_1"] and dirs[other] == []
    assert dirs[spec["models"][2]] == [linked / "fold_1"]  # its fold_0 is a symlink out of the folder
    text = "\n".join(problems.lines)
    assert f"'members' entry of {model}: '../../../../elsewhere/fold_0' resolves to {elsewhere}" in text
    assert f"'members' entry of {other}: '{elsewhere}' is an absolute path" in text
    assert f"'members' entry of {spec['models'][2]}: 'fold_0' resolves to {elsewhere}" in text
    with pytest.raises(ArtifactError) as info:
        ArtifactSet.open(copy)
    assert "refused (an artifact names only files inside its folder)" in str(info.value)
    assert "elsewhere/fold_0/scorer.json" not in str(info.value)  # nothing outside was read

    spec = {**select(root, "mean"), "models": ["../../outside", *spec["models"][1:]]}
    problems = Problems()
    assert "../../outside" not in EnsembleArtifact.member_dirs(_artifact_root(saved, tmp_path / "b", spec), spec,
                                                               [0], problems)
    assert any("'models' entry '../../outside' resolves to" in line for line in problems.lines), problems.lines


def test_a_stacker_model_file_outside_its_folder_is_refused_before_it_is_read(saved, tmp_path, monkeypatch):
    import common.ensemble.stacker

    _, _, _, root = saved
    copy = _artifact_root(saved, tmp_path, select(root, "stacker"))
    meta_file = copy / ENSEMBLE_DIR / "stacker" / "stacker.json"
    meta = json.loads(meta_file.read_text())
    meta["model_files"]["0"], meta["model_files"]["1"] = "/etc/passwd", "../../../../x.txt"
    meta_file.write_text(json.dumps(meta))
    read = []
    monkeypatch.setattr(common.ensemble.stacker, "lightgbm_model_problem", lambda path: read.append(path))
    problems = Problems()
    EnsembleArtifact.check(copy / ENSEMBLE_DIR, select(copy, "stacker"), problems)
    assert f"{meta_file}: 'model_files' entry 0: '/etc/passwd' is an absolute path: refused" in "\n".join(
        problems.lines)
    assert any("'model_files' entry 1: '../../../../x.txt' resolves to" in line for line in problems.lines)
    assert all(path.parent == meta_file.parent for path in read) and len(read) == len(meta["model_files"]) - 2


def test_models_that_disagree_with_the_stackers_columns_are_found_by_the_check(saved, tmp_path):
    _, _, _, root = saved
    spec = select(root, "stacker")
    spec["models"] = [*spec["models"][:-1], "renamed"]
    problems = Problems()
    EnsembleArtifact.check(root / ENSEMBLE_DIR, spec, problems)
    assert any("disagree with the stacker's prediction columns" in line and "renamed" in line
               for line in problems.lines), problems.lines
    problems = Problems()
    EnsembleArtifact.check(root / ENSEMBLE_DIR, select(root, "stacker"), problems)
    assert not problems, problems.lines
