"""The run report's sections on training: the training curves (02_train's log.csv) and MLM and pseudo-labels.

`training_curves` draws one model's train loss and held-out QWK per fold; `section_curves` and `section_pseudo`
return the HTML of their sections of common.tools.run_report; `students_of_run` finds the students a run's
outputs show.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from common.config.layout import pseudo_dir, pseudo_plots_dir
from common.tools.report_html import _PLOT_STYLE, _fig, _img, _json, _missing, _plots, _table
from common.tools.report_runs import _other_runs_note, other_runs


@plt.rc_context(_PLOT_STYLE)
def training_curves(log: pd.DataFrame, name: str) -> plt.Figure:
    """Train loss and held-out QWK of one model (its log.csv) against the step: one line per fold (and seed,
    dashed), colour by fold, one legend outside the plots, the stages of a multi-stage schedule dotted."""
    fig, (ax_loss, ax_qwk) = plt.subplots(1, 2, figsize=(11, 3.8))
    units = ["fold", "seed"] if "seed" in log.columns and log["seed"].nunique() > 1 else ["fold"]
    folds = sorted(log["fold"].unique())
    styles = {s: ls for s, ls in zip(sorted(log["seed"].unique()) if "seed" in units else [None],
                                     ["-", "--", ":", "-."] * 8, strict=False)}
    for key, group in log.groupby(units):
        fold, seed = (key[0], key[1]) if len(units) == 2 else (key[0], None)
        color, style = f"C{folds.index(fold) % 10}", styles[seed]
        label = f"fold {fold}" + (f", seed {seed}" if seed is not None else "")
        ax_loss.plot(group["step"], group["train_loss"], color=color, ls=style, lw=1, label=label)
        evals = group.dropna(subset=["eval_qwk"])
        ax_qwk.plot(evals["step"], evals["eval_qwk"], color=color, ls=style, marker=".", lw=1.2)
    if "stage" in log.columns:
        for stage, start in log.groupby("stage")["step"].min().items():
            if start > log["step"].min():
                for ax in (ax_loss, ax_qwk):
                    ax.axvline(start, color="grey", ls=":", lw=1)
                ax_qwk.annotate(f"stage {stage}", (start, 1), xycoords=("data", "axes fraction"),
                                xytext=(3, -12), textcoords="offset points", color="grey", fontsize=8)
    ax_loss.set(title=f"{name}: train loss", xlabel="optimizer step", ylabel="train loss (per step)")
    ax_qwk.set(title=f"{name}: held-out QWK (rounded)", xlabel="optimizer step", ylabel="QWK")
    for ax in (ax_loss, ax_qwk):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(loc="upper left", bbox_to_anchor=(1.0, 0.95), title="held-out fold")
    return fig


def section_curves(out: Path) -> str:
    parts = []
    stale = other_runs(out)
    for log_path in sorted((out / "train").glob("*/log.csv")):
        if log_path.parent.name not in stale:
            name = log_path.parent.name
            parts.append(_fig(training_curves(pd.read_csv(log_path), name), f"{name} training curves"))
    return ("".join(parts) or _missing("02_train has not written any log.csv")) + _other_runs_note(stale, shown=False)


def section_pseudo(out: Path) -> str:
    parts = []
    stale = other_runs(out)
    for folder in sorted(p for p in (out / "train").glob("*") if p.is_dir() and p.name not in stale):
        mlm = (_json(folder / "metrics.json") or {}).get("mlm")
        if mlm:
            parts.append(f"<p>{html.escape(folder.name)}: MLM domain adaptation, held-out loss "
                         f"{mlm['held_out_loss_before']:.4f} -> {mlm['held_out_loss_after']:.4f} on "
                         f"{mlm['n_essays']} essays.</p>")
    skipped = {}
    for report in sorted((out / "pseudo").glob("*/report.csv")):
        student = report.parent.name
        if student in stale:
            skipped[student] = stale[student]
            continue
        frame = pd.read_csv(report)
        keep = ["prompt_name", "n_pseudo", "n_train", "pseudo_mean", "train_mean"]
        teacher = (_json(report.parent / "metrics.json") or {}).get("teacher", "?")
        parts.append(f"<p>Pseudo-labels of {html.escape(student)} (teacher {html.escape(str(teacher))}, last fold) "
                     "vs train scores, per prompt:</p>" + _table(frame[[c for c in keep if c in frame.columns]], ".3f"))
        parts.append(_plots([_img(p) for p in sorted(pseudo_plots_dir(out, student).glob("*.png"))]))
    students = students_of_run(out, stale)
    unlabelled = [s for s in students if not (pseudo_dir(out, s) / "report.csv").is_file()]
    if not students:
        parts.append('<p class="note">No model of this run is a student (none was trained with a teacher, and there '
                     "is no pseudo/ folder), so 01_pseudo_label had nothing to do.</p>")
    elif unlabelled:
        parts.append(_missing(f"01_pseudo_label has not run for {', '.join(unlabelled)}: no "
                              "pseudo/<student>/report.csv"))
    return "".join(parts) + _other_runs_note(skipped, shown=False)


def students_of_run(out: Path, stale: Mapping[str, str]) -> list[str]:
    """The students this run's outputs show: a model of this run whose fold models were trained with a teacher
    (their train_config.json), or one that has a pseudo/<student>/ folder.

    The report reads outputs, not params.yaml (a run may have been made with train.students={} on the command
    line): a student configured but neither labelled nor trained yet leaves no trace to find.
    """
    found = {p.name for p in (out / "pseudo").glob("*") if p.is_dir()}
    for config in (out / "train").glob("*/folds/*/train_config.json"):
        name = config.parents[2].name
        if name not in stale and (_json(config) or {}).get("model", {}).get("teacher"):
            found.add(name)
    return sorted(found - set(stale))
