"""The run report (make report) on a briefly trained demo run: every section, with the run's own numbers."""

import json
import re
import shutil

import pandas as pd
import pytest

from common.tools.run_report import SECTIONS, build_report, main
from tests.conftest import NO_STUDENTS, run_cli

pytestmark = pytest.mark.slow


def section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, flags=re.S)
    assert match, f"section {key} missing"
    return match.group(1)


def test_report_has_every_section_with_the_runs_numbers(trained_output, demo_input, tmp_path):
    folder, _ = demo_input
    out = tmp_path / "out"
    shutil.copytree(trained_output, out)
    common = [f"paths.input={folder}", f"paths.output={out}", NO_STUDENTS]
    for stage in ("03_oof_thresholds", "05_infer"):
        result = run_cli(stage, *common)
        assert result.returncode == 0, result.stderr[-2000:]
    assert main(["--output", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert page == build_report(out)  # the file is exactly the report of this run
    for key in SECTIONS:
        section(page, key)

    prepare = json.loads((out / "prepare" / "metrics.json").read_text())
    assert f"<td>{prepare['n_train']}</td>" in section(page, "data")
    for name in ("tiny-regression", "tiny-ordinal"):
        report = json.loads((out / "thresholds" / f"{name}.json").read_text())
        assert f"{report['qwk_nested']:.4f}" in section(page, "models")
        assert f"{report['thresholds'][0]:.3f}" in section(page, "thresholds")
        assert f"{report['per_group']['origin']['other']:.4f}" in section(page, "groups")
    ensemble = json.loads((out / "ensemble" / "metrics.json").read_text())
    assert f"{ensemble['qwk_nested']:.4f}" in section(page, "ensemble")
    assert section(page, "confusion").count("<img") == 4  # confusion + pred-vs-true per model
    assert section(page, "curves").count("<img") == 2  # one per trained model
    weights = json.loads((out / "ensemble" / "artifacts" / "ensemble.json").read_text())["methods"]["scipy"]["weights"]
    assert f"{weights['tiny-ordinal']:.3f}" in section(page, "weights")
    infer = json.loads((out / "infer" / "metrics.json").read_text())
    assert f"{infer['n_essays']} test essays" in section(page, "inference")
    runtime = section(page, "runtime")
    for stage in ("02_train", "04_ensemble", "03_oof_thresholds", "05_infer"):
        assert f"<td>{stage}</td>" in runtime
    assert "01_pseudo_label has not run" in section(page, "pseudo")  # an absent stage is said, not hidden
    runs = pd.read_json(out / "runtime.jsonl", lines=True)
    assert (runs["seconds"] > 0).all()


def test_models_of_another_run_are_skipped_and_named(trained_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained_output, out)
    stale = out / "train" / "old-model"
    shutil.copytree(out / "train" / "tiny-regression", stale)
    metrics = json.loads((stale / "metrics.json").read_text())
    (stale / "metrics.json").write_text(json.dumps({**metrics, "folds_fingerprint": "0123456789abcdef"}))
    page = build_report(out)
    curves = section(page, "curves")
    assert curves.count("<img") == 2  # the two models of this run, not the leftover
    assert "old-model</b> (trained on other folds (from another run))" in curves
    assert "tiny-regression</b>" not in curves


def test_no_run_no_report(tmp_path, capsys):
    assert main(["--output", str(tmp_path)]) == 2
    assert "make demo" in capsys.readouterr().err
