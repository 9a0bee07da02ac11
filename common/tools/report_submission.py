"""The run report's sections on the submission: inference (05_infer) and the score distribution of train labels,
OOF predictions and the submission.

`nested_oof_scores` rebuilds a model's nested OOF scores from its oof.parquet and per-fold thresholds;
`section_inference` and `section_distribution` return the HTML of their sections of common.tools.run_report.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from common.config.layout import stage_timings
from common.core.logs import duration as _duration
from common.core.logs import format_hours
from common.scoring.metrics import MIN_LABEL, N_CLASSES
from common.scoring.thresholds import apply_thresholds
from common.tools.report_html import _PLOT_STYLE, _fig, _json, _missing, _table
from common.tools.report_runs import (
    _ensemble_note,
    _folds,
    _models,
    _other_runs_note,
    _stale_ensemble,
    other_runs,
)

SCORES = list(range(MIN_LABEL, MIN_LABEL + N_CLASSES))


def section_inference(out: Path) -> str:
    metrics = _json(out / "infer" / "metrics.json")
    if metrics is None:
        return _missing("05_infer has not run locally")
    estimate = metrics["runtime_estimate"]
    timings = _json(stage_timings(out, "infer")) or {}
    counts = pd.DataFrame(sorted(metrics["score_counts"].items()), columns=["score", "essays"])
    took = f" in {_duration(timings['seconds'])}" if "seconds" in timings else ""
    here = timings.get("this_device_hours")
    here = f", {format_hours(here)} on this machine (measured speed)" if here is not None else ""
    return (_ensemble_note(_stale_ensemble(out, other_runs(out)))
            + f"<p>{metrics['n_essays']} test essays{took} on {', '.join(metrics['devices'])}. "
            f"{estimate['n_essays']} essays with {estimate['n_fold_models']} fold models: "
            f"{format_hours(estimate['t4_hours'])} on a T4 (FLOP estimate){here}; Kaggle limit "
            f"{estimate['limit_hours']:g} h (the runtime section sets them side by side).</p>" + _table(counts))


def nested_oof_scores(out: Path, name: str, report: dict) -> pd.Series | None:
    """A model's OOF scores by essay_id, each fold thresholded with the cut points fitted on the other folds
    (`report`: its thresholds/<model>.json): the scores behind its nested QWK. None without an OOF file."""
    path = out / "train" / name / "oof.parquet"
    cuts = report.get("thresholds_per_fold")
    if not path.is_file() or not cuts:
        return None
    oof = pd.read_parquet(path, columns=["essay_id", "fold", "pred"])
    scores = pd.Series(0, index=oof["essay_id"], dtype="int64")
    for fold, rows in oof.groupby("fold"):
        scores.loc[rows["essay_id"]] = apply_thresholds(rows["pred"].to_numpy(), cuts[str(int(fold))])
    return scores


@plt.rc_context(_PLOT_STYLE)
def _distribution_figure(shares: pd.DataFrame) -> str:
    """Side-by-side bars: for each score, the share of essays of each source (rows of `shares`)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(shares)
    colors = itertools.cycle(f"C{i}" for i in range(10))
    for i, (label, row) in enumerate(shares.iterrows()):
        xs = [s + (i - len(shares) / 2 + 0.5) * width for s in shares.columns]
        color = "#999999" if label.startswith("train") else "#222222" if label.startswith("submission") else None
        ax.bar(xs, row.to_numpy(), width=width, label=label, color=color or next(colors))
    ax.set_xticks(SCORES)
    ax.set(xlabel="score", ylabel="share of essays", title="Score distribution: train labels, OOF, submission")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _fig(fig, "score distribution")


def section_distribution(out: Path) -> str:
    folds = _folds(out)
    if folds is None:
        return _missing("00_prepare has not run: no train labels")
    stale = other_runs(out)
    sources = {f"train labels (n={len(folds)})": folds["score"]}
    ensemble_oof = out / "ensemble" / "oof.parquet"
    ensemble = _json(out / "ensemble" / "metrics.json") or {}
    if ensemble_oof.is_file() and not _stale_ensemble(out, stale):
        scores = pd.read_parquet(ensemble_oof)["score"]
        sources[f"OOF ensemble ({ensemble.get('selected', '?')}), nested (n={len(scores)})"] = scores
    for name, report in _models(out).items():
        if name in stale:
            continue
        scores = nested_oof_scores(out, name, report)
        if scores is not None:
            sources[f"OOF {name}, nested thresholds (n={len(scores)})"] = scores
    submission = out / "submission.csv"
    if submission.is_file():
        scores = pd.read_csv(submission)["score"]
        sources[f"submission (n={len(scores)})"] = scores
    shares = pd.DataFrame({k: v.value_counts(normalize=True) for k, v in sources.items()}).T
    shares = shares.reindex(columns=SCORES).fillna(0.0)
    table = shares.copy()
    table.columns = [f"score {s}" for s in SCORES]
    missing = "" if submission.is_file() else _missing("no submission.csv: 05_infer has not run")
    return ("<p>Share of essays per score: the train labels, each model's OOF predictions thresholded with the "
            "cut points fitted on the other folds, the selected ensemble's nested OOF scores (what the submission's "
            "method scored on held-out folds), and the submission. A submission far from the OOF shares points at a shift between train "
            "and test or at the thresholds.</p>" + missing + _ensemble_note(_stale_ensemble(out, stale))
            + _distribution_figure(shares) + _table(table.rename_axis("scores of").reset_index(), ".3f")
            + _other_runs_note({n: stale[n] for n in _models(out) if n in stale}, shown=False))
