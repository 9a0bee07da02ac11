"""The run report's runtime section: each stage's time from runtime.jsonl and inference against Kaggle's limit.

`section_runtime` sums the latest run of each stage (leaving out the fold workers a stage started, which its
own time holds) and sets the inference estimates of 05_infer beside Kaggle's limit, as tables and bar plots.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from common.config.layout import stage_timings
from common.config.stage import RUNTIME_LOG
from common.core.logs import duration as _duration
from common.core.logs import format_hours
from common.tools.report_html import _PLOT_STYLE, _fig, _json, _missing, _percent, _table


@plt.rc_context(_PLOT_STYLE)
def _runtime_figure(table: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(table) + 1.2))
    ax.barh(table["stage"], table["seconds"], color="#4c72b0")
    for y, seconds in enumerate(table["seconds"]):
        ax.annotate(_duration(seconds), (seconds, y), xytext=(3, 0), textcoords="offset points", va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, table["seconds"].max() * 1.15)
    ax.set(xlabel="seconds (sum over the stage's latest runs)", title="Runtime per stage, this run")
    return _fig(fig, "runtime per stage")


@plt.rc_context(_PLOT_STYLE)
def _budget_figure(hours: dict[str, float], limit: float) -> str:
    """Horizontal bars of the inference estimates with Kaggle's limit as a red line."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(hours) + 1.3))
    ax.barh(list(hours), list(hours.values()), color="#4c72b0")
    for y, value in enumerate(hours.values()):
        ax.annotate(f"{format_hours(value)}, {_percent(value / limit)} of {limit:g} h", (value, y), xytext=(4, 0),
                    textcoords="offset points", va="center")
    ax.axvline(limit, color="#c0392b", lw=2)
    ax.annotate(f"Kaggle limit {limit:g} h", (limit, 1), xycoords=("data", "axes fraction"), xytext=(-4, -14),
                textcoords="offset points", ha="right", color="#c0392b")
    ax.invert_yaxis()
    ax.set_xlim(0, max(limit, *hours.values()) * 1.08)
    ax.set(xlabel="hours", title="Inference on the hidden test set against Kaggle's limit")
    return _fig(fig, "inference against the Kaggle limit")


def _budget(out: Path) -> str:
    metrics = _json(out / "infer" / "metrics.json")
    if metrics is None:
        return _missing("05_infer has not run: no inference estimate to set against Kaggle's limit")
    estimate = metrics["runtime_estimate"]
    limit = estimate["limit_hours"]
    what = f"{estimate['n_essays']} essays x {estimate['n_fold_models']} fold models"
    hours = {f"T4, FLOP estimate\n({what})": estimate["t4_hours"]}
    here = (_json(stage_timings(out, "infer")) or {}).get("this_device_hours")
    if here is not None:
        hours[f"this machine, measured speed\n({what})"] = here
    worst = max(hours.values())
    verdict = ("within" if worst < limit else '<b class="missing">over</b>')
    return (f"<h3>Inference against Kaggle's {limit:g} h limit</h3><p>The larger estimate, "
            f"{format_hours(worst)}, {_percent(worst / limit)} of {limit:g} h, is {verdict} the limit.</p>"
            + _budget_figure(hours, limit))


def section_runtime(out: Path) -> str:
    path = out / RUNTIME_LOG
    if not path.is_file():
        return _missing(f"no {RUNTIME_LOG}: stages record their runtime there when they finish") + _budget(out)
    runs = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    latest = runs.assign(call=runs["args"].map(" ".join)).drop_duplicates(["stage", "call"], keep="last")
    inside = latest["inside"].notna() if "inside" in latest else pd.Series(False, index=latest.index)
    table = latest[~inside].groupby("stage", sort=False).agg(runs=("seconds", "size"), seconds=("seconds", "sum"),
                                                             finished=("finished", "max")).reset_index()
    if table.empty:
        return _missing(f"{RUNTIME_LOG} holds no finished stage") + _inside_note(latest[inside]) + _budget(out)
    table.insert(3, "time", table["seconds"].map(_duration))
    table.insert(4, "share", (table["seconds"] / table["seconds"].sum()).map(_percent))
    return _table(table, ".1f") + _inside_note(latest[inside]) + _runtime_figure(table) + _budget(out)


def _inside_note(runs: pd.DataFrame) -> str:
    """What the runtime table leaves out: the runs of processes a stage started (02_train's fold workers), whose
    time the stage's own record already holds (it waits for them; parallel workers overlap)."""
    if runs.empty:
        return ""
    notes = [f"{len(group)} fold-worker run{'s' * (len(group) != 1)} ({_duration(group['seconds'].sum())} "
             f"together) inside {html.escape(stage)}" for stage, group in runs.groupby("inside", sort=False)]
    return f'<p class="note">Not added to the sums: {"; ".join(notes)}: the stage\'s own time holds them.</p>'
