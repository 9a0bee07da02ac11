"""Tests for common/ensemble_artifact.py: what 04 saves, 05 reads back, checks and applies exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common.artifact_checks import ArtifactError, Problems
from common.ensemble_artifact import ENSEMBLE_DIR, EnsembleArtifact
from common.selection import Target, build_ensemble, stacker_features
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


@pytest.mark.parametrize("name", ["mean", "greedy", "scipy", "stacker"])
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
    if name == "stacker":  # the test essays' features: the saved vocabulary, assigner and statistics, origin other
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
