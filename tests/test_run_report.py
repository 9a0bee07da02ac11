"""The run report (make report) on a briefly trained demo run: every section, with the run's own numbers."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from common.core.logs import format_hours
from common.scoring.metrics import qwk
from common.tools.report_results import section_data, section_groups
from common.tools.report_runtime import section_runtime
from common.tools.report_submission import nested_oof_scores, section_inference
from common.tools.report_training import section_pseudo, training_curves
from common.tools.run_report import SECTIONS, build_report, main
from tests.conftest import DEMO_MEMBERS, NO_STUDENTS, REPO, built_once, run_cli

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, flags=re.S)
    assert match, f"section {key} missing"
    return match.group(1)


def row(html: str, first_cell: str) -> str:
    """The table row of `html` whose first cell starts with `first_cell`."""
    match = re.search(rf"<tr><td>{re.escape(first_cell)}.*?</tr>", html)
    assert match, f"no row {first_cell!r}"
    return match.group(0)


@pytest.fixture(scope="module")
def reported_output(trained_output, demo_input, tmp_path_factory):
    """`trained_output` plus 03_oof_thresholds and 05_infer: every stage the report reads but 01_pseudo_label."""
    folder, _ = demo_input

    def build(root: Path) -> None:
        out = root / "out"
        shutil.copytree(trained_output, out)
        common = [f"paths.input={folder}", f"paths.output={out}", NO_STUDENTS, DEMO_MEMBERS]
        for stage in ("03_oof_thresholds", "05_infer"):
            result = run_cli(stage, *common)
            assert result.returncode == 0, result.stderr[-2000:]

    return built_once(tmp_path_factory, "reported", build) / "out"


@pytest.fixture(scope="module")
def page(reported_output):
    return build_report(reported_output)


def test_report_has_every_section_with_the_runs_numbers(reported_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reported_output, out)
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
    pseudo = section(page, "pseudo")  # no student in this run: not running 01_pseudo_label is right, and said so
    assert '<p class="note">No model of this run is a student' in pseudo and "has not run" not in pseudo
    runs = pd.read_json(out / "runtime.jsonl", lines=True)
    assert (runs["seconds"] > 0).all()


def test_groups_count_the_essays_of_each_prompt_and_origin(reported_output, page):
    groups = section(page, "groups")
    folds = pd.read_parquet(reported_output / "prepare" / "folds.parquet")
    for key in ("prompt_name", "origin"):
        for value, n in folds[key].value_counts().items():
            assert row(groups, value).startswith(f"<tr><td>{value}</td><td>{n}</td>")
    report = json.loads((reported_output / "thresholds" / "tiny-ordinal.json").read_text())
    assert f"<td>all rows</td><td>{len(folds)}</td>" in groups
    assert f"{report['qwk_nested']:.4f}" in row(groups, "all rows")
    ensemble = json.loads((reported_output / "ensemble" / "metrics.json").read_text())
    per_prompt = {k: v for k, v in ensemble["per_group"]["prompt_name"].items() if v is not None}
    assert per_prompt  # 04 writes the selected method's nested QWK per prompt: the ensemble column
    prompt, value = sorted(per_prompt.items())[0]
    assert f"<td>{value:.4f}</td>" in row(groups, prompt)


def test_a_student_without_pseudo_labels_is_said_in_red(reported_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reported_output / "prepare", out / "prepare")
    shutil.copytree(reported_output / "train", out / "train")
    for config in (out / "train" / "tiny-ordinal" / "folds").glob("*/train_config.json"):
        settings = json.loads(config.read_text())
        config.write_text(json.dumps({**settings, "model": {**settings["model"], "teacher": "tiny-regression"}}))
    pseudo = section_pseudo(out)
    assert '<p class="missing">01_pseudo_label has not run for tiny-ordinal' in pseudo
    assert "No model of this run is a student" not in pseudo


def test_the_prompt_table_counts_each_prompt_as_the_score_share_legend_does(tmp_path, monkeypatch):
    """An essay found in the corpus takes the corpus's prompt whatever its cluster: a prompt's essays and the
    cluster named after it differ. The table counts by prompt_name, as the legend, with the cluster's size beside."""
    from common.prepare import plots

    names = ["Prompt 6"] * 5 + ["Car-free cities"] + ["Prompt 6"] * 3 + ["Prompt 6#2"] + ["Prompt 6"] * 2
    folds = pd.DataFrame({"essay_id": [f"e{i}" for i in range(12)], "score": [1, 2, 3, 4, 5, 6] * 2, "fold": [0, 1] * 6,
                          "prompt_cluster": [0] * 6 + [1] * 4 + [2] * 2, "prompt_name": names,
                          "origin": ["persuade"] * 9 + ["other"] + ["persuade"] * 2})
    (tmp_path / "prepare").mkdir()
    folds.to_parquet(tmp_path / "prepare" / "folds.parquet")
    sizes = {"Prompt 6": 6, "Prompt 6#2": 4, "Prompt 6#3": 2}  # cluster 2: every essay in the corpus as Prompt 6
    (tmp_path / "prepare" / "metrics.json").write_text(json.dumps(
        {"n_train": 12, "clusters": {"n_clusters": 3, "train_sizes": sizes}}))
    legend = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (legend.extend(
        t.get_text() for t in fig.axes[0].get_legend().get_texts()), plt.close(fig)))
    plots.plot_score_distribution(folds, "prompt_name", tmp_path / "score_by_prompt.png", "Score share per prompt")
    counts = dict(re.fullmatch(r"(.+) \(n=(\d+)\)", label).groups() for label in legend)
    assert counts.pop("all rows") == "12" and len(counts) == 3
    data = section_data(tmp_path)
    for prompt, n in counts.items():
        assert row(data, f"{prompt}</td>").startswith(f"<tr><td>{prompt}</td><td>{n}</td>")
    assert row(data, "Prompt 6</td>") == "<tr><td>Prompt 6</td><td>10</td><td>6</td></tr>"
    assert row(data, "Prompt 6#3</td>") == "<tr><td>Prompt 6#3</td><td>0</td><td>2</td></tr>"
    assert row(data, "Prompt 6#2</td>") == "<tr><td>Prompt 6#2</td><td>1</td><td>4</td></tr>"
    assert row(data, "Car-free cities</td>") == "<tr><td>Car-free cities</td><td>1</td><td></td></tr>"


def test_groups_show_the_ensembles_column_where_its_metrics_have_it(reported_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reported_output / "prepare", out / "prepare")
    shutil.copytree(reported_output / "train", out / "train")
    shutil.copytree(reported_output / "thresholds", out / "thresholds")
    metrics = json.loads((reported_output / "ensemble" / "metrics.json").read_text())
    prompts = sorted(pd.read_parquet(out / "prepare" / "folds.parquet")["prompt_name"].unique())
    per_prompt = {p: 0.5 + i / 100 for i, p in enumerate(prompts)}
    (out / "ensemble").mkdir()
    (out / "ensemble" / "metrics.json").write_text(json.dumps({**metrics, "per_group": {"prompt_name": per_prompt}}))
    groups = section_groups(out)
    assert f"<th>ensemble ({metrics['selected']})</th>" in groups
    assert re.search(rf"<tr><td>{re.escape(prompts[1])}</td><td>\d+</td><td>0.5100</td>", groups)
    assert f"<td>{metrics['qwk_nested']:.4f}</td>" in row(groups, "all rows")


def test_no_number_prints_more_than_four_decimals(page):
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert len(cells) > 200
    long = [c for c in cells if re.search(r"\d\.\d{5,}", c)]
    assert not long, long[:5]
    models = section(page, "models")
    assert re.search(r"<td>\d+\.\d</td></tr>", models)  # train seconds: one decimal
    runtime = section(page, "runtime")
    assert not re.search(r"<td>\d+\.\d{2,}</td>", runtime)  # seconds: one decimal, never 1016.3000


def test_runtime_estimates_are_never_zero_hours(reported_output, tmp_path):
    assert format_hours(0.0012) == "0.0012 h (4.3 s)"
    assert format_hours(0.00030509842) == "0.0003051 h (1.1 s)"
    assert format_hours(0.3944) == "0.3944 h (23 min 39 s)"
    assert format_hours(2.346) == "2.35 h"
    out = tmp_path / "out"
    shutil.copytree(reported_output / "infer", out / "infer")
    shutil.copytree(reported_output / "timings", out / "timings")
    metrics = json.loads((out / "infer" / "metrics.json").read_text())
    metrics["runtime_estimate"]["t4_hours"] = 0.0012
    (out / "infer" / "metrics.json").write_text(json.dumps(metrics))
    timings = json.loads((out / "timings" / "infer.json").read_text())
    (out / "timings" / "infer.json").write_text(json.dumps({**timings, "this_device_hours": 0.0005}))
    for text in (section_inference(out), section_runtime(out)):
        assert "0.00 h" not in text and "0.00%" not in text
        assert "0.0012 h (4.3 s)" in text


def test_runtime_sets_each_stage_and_the_inference_against_kaggles_limit(page):
    runtime = section(page, "runtime")
    assert re.search(r"<tr><td>05_infer</td><td>\d+</td><td>\d+\.\d</td><td>[^<]+</td><td>[\d.]+%</td>", runtime)
    assert "Inference against Kaggle's 9 h limit" in runtime and "is within the limit" in runtime
    assert runtime.count("<img") == 2  # seconds per stage; the estimates against the 9 h line


FOLD_WORKER = """
from common.config.stage import exit_with

exit_with(lambda params: None, "a fold worker of 02_train that trains nothing")
"""


def test_runtime_counts_the_fold_workers_inside_their_stage_not_again(tmp_path):
    """02_train's own record already holds the time of the fold workers it waited for: theirs are not added."""
    from common.config.loader import load_params
    from common.config.stage import record_runtime
    from common.train.fold_workers import train_in_workers

    script = tmp_path / "02_train" / "run.py"
    script.parent.mkdir()
    script.write_text(FOLD_WORKER)
    out = tmp_path / "out"
    params = load_params(REPO / "params.yaml", [f"paths.output={out}", "train.device=cpu", "train.fold_workers=2"])
    train_in_workers(params, "tiny-regression", [0, 1], script)
    record_runtime(out, "02_train", ["train.model=tiny-regression"], 100.0)  # the stage, after its workers
    runs = pd.read_json(out / "runtime.jsonl", lines=True)
    assert list(runs["stage"]) == ["02_train"] * 3  # both workers ran as 02_train and recorded their runtime
    runtime = section_runtime(out)
    assert row(runtime, "02_train").startswith("<tr><td>02_train</td><td>1</td><td>100.0</td>")
    assert "2 fold-worker runs" in runtime and "inside 02_train" in runtime


def test_ensemble_table_shows_each_methods_bootstrap_interval(reported_output, page):
    ensemble = section(page, "ensemble")
    metrics = json.loads((reported_output / "ensemble" / "metrics.json").read_text())
    assert metrics["intervals"]["rows"]
    for r in metrics["intervals"]["rows"]:
        line = row(ensemble, f"<b>{r['name']}</b>" if r["name"] == metrics["selected"] else r["name"])
        assert f"<td>{r['qwk_all']:.4f}</td><td>[{r['qwk_all_low']:.4f}, {r['qwk_all_high']:.4f}]</td>" in line
        assert f"[{r['qwk_other_low']:.4f}, {r['qwk_other_high']:.4f}]" in line


def test_distribution_sets_submission_against_train_and_nested_oof(reported_output, page):
    distribution = section(page, "distribution")
    assert distribution.count("<img") == 1
    folds = pd.read_parquet(reported_output / "prepare" / "folds.parquet")
    train = folds["score"].value_counts(normalize=True)
    assert row(distribution, f"train labels (n={len(folds)})").endswith(
        "".join(f"<td>{train.get(s, 0.0):.3f}</td>" for s in range(1, 7)) + "</tr>")
    submission = pd.read_csv(reported_output / "submission.csv")
    row(distribution, f"submission (n={len(submission)})")
    for name in ("tiny-regression", "tiny-ordinal"):
        row(distribution, f"OOF {name}, nested thresholds (n={len(folds)})")
        report = json.loads((reported_output / "thresholds" / f"{name}.json").read_text())
        scores = nested_oof_scores(reported_output, name, report).loc[folds["essay_id"]].to_numpy()
        assert qwk(folds["score"].to_numpy(), scores) == pytest.approx(report["qwk_nested"])  # the nested scores
    ensemble = json.loads((reported_output / "ensemble" / "metrics.json").read_text())
    nested = pd.read_parquet(reported_output / "ensemble" / "oof.parquet").merge(folds, on="essay_id")
    assert qwk(nested["score_y"].to_numpy(), nested["score_x"].to_numpy()) == pytest.approx(ensemble["qwk_nested"])
    shares = nested["score_x"].value_counts(normalize=True)
    assert row(distribution, f"OOF ensemble ({ensemble['selected']}), nested (n={len(folds)})").endswith(
        "".join(f"<td>{shares.get(s, 0.0):.3f}</td>" for s in range(1, 7)) + "</tr>")


def test_training_curves_have_one_labelled_line_per_fold_and_seed_and_the_legend_outside(reported_output):
    for name in ("tiny-regression", "tiny-ordinal"):
        log = pd.read_csv(reported_output / "train" / name / "log.csv")
        fig = training_curves(log, name)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        seeds = "seed" in log.columns and log["seed"].nunique() > 1
        units = log[["fold", "seed"]].drop_duplicates() if seeds else log[["fold"]].drop_duplicates()
        assert len(labels) == len(units) == len(set(labels))
        assert all(label.startswith("fold ") for label in labels)
        loss, score = fig.axes
        assert loss.get_xlabel() and loss.get_ylabel() and score.get_ylabel() == "QWK"
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        assert legend.x0 >= score.get_window_extent().x1  # beside the plots, over no line
        plt.close(fig)


def test_everything_of_another_run_is_marked_or_skipped(reported_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reported_output, out)
    stale = out / "train" / "old-model"
    shutil.copytree(out / "train" / "tiny-regression", stale)
    metrics = json.loads((stale / "metrics.json").read_text())
    (stale / "metrics.json").write_text(json.dumps({**metrics, "folds_fingerprint": "0123456789abcdef"}))
    shutil.copy(out / "thresholds" / "tiny-regression.json", out / "thresholds" / "old-model.json")
    shutil.copy(out / "thresholds" / "plots" / "tiny-regression_confusion.png",
                out / "thresholds" / "plots" / "old-model_confusion.png")
    ensemble = json.loads((out / "ensemble" / "metrics.json").read_text())
    (out / "ensemble" / "metrics.json").write_text(json.dumps({**ensemble, "models": [*ensemble["models"], "old-model"]}))
    page = build_report(out)
    badge = '<span class="badge"'
    curves = section(page, "curves")
    assert curves.count("<img") == 2  # the two models of this run, not the leftover
    assert "old-model</b> (trained on other folds (from another run))" in curves and badge in curves
    assert "tiny-regression</b>" not in curves
    for key in ("models", "thresholds"):
        assert badge in row(section(page, key), "old-model") and badge not in row(section(page, key), "tiny-ordinal")
    assert re.search(r"<th>old-model<span class=\"badge\"", section(page, "groups"))
    assert re.search(r"<figcaption>old-model<span class=\"badge\"", section(page, "confusion"))
    for key in ("ensemble", "weights", "inference", "distribution"):
        assert "The ensemble was built on model(s) of another run: <b>old-model</b>" in section(page, key), key
    assert "OOF old-model" not in section(page, "distribution")


def test_report_renders_in_a_headless_browser_without_console_errors(page, tmp_path):
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium/chromium-browser/google-chrome on PATH: apt-get install chromium to run it")

    def render(html: str) -> tuple[str, list[str]]:
        """(the DOM after the load event, the console messages) of `html` in headless chromium."""
        path = tmp_path / "page.html"
        path.write_text(html, encoding="utf-8")
        done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                               "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", line)]

    # The report has no script; this one, added for the test, counts the images the browser could not decode.
    probe = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-broken-images', "
             "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length));</script>")
    dom, errors = render(f"<html><body><img src='data:image/png;base64,AAAA'>{probe}<script>nope()</script></body></html>")
    assert any("Uncaught ReferenceError" in e for e in errors)  # console errors do reach the test
    assert 'data-broken-images="1"' in dom  # and so do images that do not decode

    dom, errors = render(page.replace("</body>", probe + "</body>"))
    assert not errors, errors
    for title in ("Models: OOF QWK", "QWK per prompt and origin", "Training curves",
                  "Score distribution: train, OOF, submission", "Runtime per stage"):
        assert f"<h2>{title}</h2>" in dom
    assert 'data-broken-images="0"' in dom
    assert dom.count("<img") == page.count("<img") >= 15


def test_no_run_no_report(tmp_path, capsys):
    assert main(["--output", str(tmp_path)]) == 2
    assert "make demo" in capsys.readouterr().err
