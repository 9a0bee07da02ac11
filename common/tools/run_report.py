"""The run report: one self-contained HTML page (plots inlined) from a finished run's outputs.

    python -m common.tools.run_report [--output DIR] [--to DIR/report/index.html]     (make report [OUT=DIR])

DIR defaults to paths.output of params.yaml (`--params`): the run that file configures.

It reads only what the stages declare as outputs (and `runtime.jsonl`, which every stage appends to):
data overview, folds, per-model and ensemble QWK (rounded, in-sample, nested, with bootstrap intervals; all
rows and other-origin rows), confusion matrices, per-prompt and per-origin QWK with the essays behind each
figure, thresholds, blend weights, training curves, MLM and pseudo-labels, inference, the score
distribution of train, OOF and submission, and the runtime of each stage against Kaggle's limit. Sections
whose stage has not run say so; anything made by another run (a model trained on other folds, an ensemble
built on one) carries a red "other run" badge or is skipped with a note that names it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import itertools
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from common.config.config import ParamsError, load_params
from common.config.layout import pseudo_dir, pseudo_plots_dir, stage_timings
from common.config.stage import RUNTIME_LOG
from common.core.io import atomic_write
from common.core.logs import duration as _duration
from common.core.logs import format_hours
from common.prepare.folds import folds_fingerprint
from common.scoring.metrics import MIN_LABEL, N_CLASSES
from common.scoring.thresholds import apply_thresholds

SECTIONS = ("data", "folds", "models", "ensemble", "confusion", "groups", "thresholds", "weights", "curves",
            "pseudo", "inference", "distribution", "runtime")
SCORES = list(range(MIN_LABEL, MIN_LABEL + N_CLASSES))
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}td{white-space:nowrap}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}img{max-width:100%}
figure{margin:0}figcaption{font-size:.9em}
.missing{color:#a33}.note{color:#555}h2{border-bottom:1px solid #ddd;margin-top:2em}
.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 5px;margin-left:4px;font-size:.8em;
font-weight:bold;white-space:nowrap}
.stale{background:#fdecea;border-left:4px solid #c0392b;padding:4px 8px}"""
_PLOT_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
               "xtick.labelsize": 9, "ytick.labelsize": 9}
"""Font sizes of the plots this module draws: readable at the size the page shows them."""


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _img(path: Path, mark: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    image = f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{mark}</figcaption></figure>" if mark else image


def _plots(images: list[str]) -> str:
    return f'<div class="plots">{"".join(images)}</div>' if images else ""


def _fig(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _cell(value: object, spec: str) -> str:
    """One table cell as HTML: floats in `spec` (a format spec, '.4f'), integers as they are, text escaped."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        return format(float(value), spec)
    return html.escape(str(value))


def _table(frame: pd.DataFrame, default: str = ".4f", formats: Mapping[str, str] | None = None,
           html_columns: tuple[str, ...] = (), headers: Mapping[str, str] | None = None) -> str:
    """`frame` as an HTML table, no index: float cells in `formats[column]` or `default` (QWK: .4f); the cells of
    `html_columns` and the `headers` given (column -> header) are HTML already (a name with its badge)."""
    formats, headers = formats or {}, headers or {}
    head = "".join(f"<th>{headers.get(c, html.escape(str(c)))}</th>" for c in frame.columns)
    specs = [formats.get(c, default) for c in frame.columns]
    raw = [c in html_columns for c in frame.columns]
    body = "".join("<tr>" + "".join(f"<td>{v if r else _cell(v, s)}</td>" for v, s, r in zip(row, specs, raw, strict=True))
                   + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)}</p>'


def _percent(share: float) -> str:
    """A share as a percentage to 3 significant digits: '4.38%', '0.00339%' (never '0.00%')."""
    return f"{100 * share:.3g}%"


def section_data(out: Path) -> str:
    metrics = _json(out / "prepare" / "metrics.json")
    if metrics is None:
        return _missing("00_prepare has not run: no output/prepare/metrics.json")
    origin = metrics.get("origin", {})
    rows = [("train essays", metrics.get("n_train")), ("test essays", metrics.get("n_test")),
            ("corpus essays", metrics.get("n_corpus")), ("external essays (no train match)", metrics.get("n_external")),
            ("train in corpus (persuade origin)", origin.get("persuade")), ("other origin", origin.get("other")),
            ("prompt clusters", metrics.get("clusters", {}).get("n_clusters"))]
    parts = [_table(pd.DataFrame(rows, columns=["", "count"]), ".0f")]
    parts.append(_plots([_img(p) for p in sorted((out / "prepare" / "plots").glob("*.png"))]))
    folds = _folds(out)
    if folds is not None:
        parts.append(_prompt_table(folds, metrics.get("clusters", {}).get("train_sizes", {})))
    return "\n".join(parts)


def _prompt_table(folds: pd.DataFrame, cluster_sizes: Mapping[str, int]) -> str:
    """Train essays per prompt_name, with the size of the prompt cluster of that name beside it.

    A prompt and the cluster named after it hold different essays: an essay found in the corpus takes the corpus's
    prompt, whatever cluster it fell in, and the others take their cluster's name (a smaller cluster with the same
    majority prompt is "<prompt>#2"). The score-share legend and the per-prompt QWK count by prompt_name, so this
    table does too; the cluster sizes (what the folds stratify or group by) sit beside, so neither count hides the other.
    """
    counts = folds["prompt_name"].value_counts()
    frame = pd.DataFrame({"train essays": counts, "in the cluster of that name": pd.Series(cluster_sizes, dtype="Int64")})
    frame["train essays"] = frame["train essays"].fillna(0).astype("Int64")  # a cluster none of whose essays has its name
    return ("<p>Train essays per prompt (as the score-share legend and the per-prompt QWK count them: the corpus's "
            "prompt where the essay is in the corpus, else its cluster's name), and the size of the prompt cluster "
            "named after it (what the folds stratify by, or hold out whole with prepare.group_by=prompt).</p>"
            + _table(frame.sort_index().rename_axis("prompt").reset_index()))


def _folds(out: Path) -> pd.DataFrame | None:
    path = out / "prepare" / "folds.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def section_folds(out: Path) -> str:
    folds = _folds(out)
    if folds is None:
        return _missing("no folds.parquet")
    table = folds.groupby("fold").agg(essays=("essay_id", "size"), mean_score=("score", "mean"),
                                      other_share=("origin", lambda s: float((s == "other").mean())),
                                      prompts=("prompt_cluster", "nunique")).reset_index()
    shares = pd.crosstab(folds["fold"], folds["score"], normalize="index").reset_index()
    shares.columns = ["fold", *[f"score {c}" for c in shares.columns[1:]]]
    return _table(table, ".3f") + _table(shares, ".3f")


def _models(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "thresholds").glob("*.json"))}


def other_runs(out: Path) -> dict[str, str]:
    """Model folders under train/ that this run's folds did not make: name -> why (the report badges or skips them)."""
    folds_path = out / "prepare" / "folds.parquet"
    current = folds_fingerprint(pd.read_parquet(folds_path)) if folds_path.is_file() else None
    found = {}
    for folder in sorted(p for p in (out / "train").glob("*") if p.is_dir()):
        made_on = (_json(folder / "metrics.json") or {}).get("folds_fingerprint")
        if made_on is None:
            found[folder.name] = "no OOF metrics"
        elif made_on != current:
            found[folder.name] = "trained on other folds (from another run)"
    return found


def _badge(why: str) -> str:
    return f'<span class="badge" title="{html.escape(why)}">other run</span>'


def _name(name: str, stale: Mapping[str, str], shown: str | None = None) -> str:
    """A model's name as HTML for a table or caption (`shown` instead of the name if given), badged if stale."""
    text = html.escape(shown or name)
    return text + _badge(stale[name]) if name in stale else text


def _other_runs_note(stale: Mapping[str, str], shown: bool) -> str:
    """The note under a section that reads per-model files: which models are not this run's, and what it did."""
    if not stale:
        return ""
    items = ", ".join(f"<b>{html.escape(n)}</b> ({html.escape(why)})" for n, why in stale.items())
    said = "Made by another run, shown with the badge" if shown else "Not part of this run, so not shown"
    return f'<p class="stale">{_badge("not this run")} {said}: {items}.</p>'


def _stale_ensemble(out: Path, stale: Mapping[str, str]) -> list[str]:
    """The models of the ensemble (04_ensemble's metrics.json) that another run made."""
    metrics = _json(out / "ensemble" / "metrics.json") or {}
    return [m for m in metrics.get("models", []) if m in stale]


def _ensemble_note(names: list[str]) -> str:
    if not names:
        return ""
    listed = ", ".join(f"<b>{html.escape(n)}</b>" for n in names)
    return f'<p class="stale">{_badge("not this run")} The ensemble was built on model(s) of another run: {listed}.</p>'


def section_models(out: Path) -> str:
    models = _models(out)
    if not models:
        return _missing("03_oof_thresholds has not run: no output/thresholds/<model>.json")
    stale = other_runs(out)
    rows = []
    for name, m in models.items():
        seconds = sum((_json(p) or {}).get("seconds", 0) for p in (out / "timings" / name).glob("*.json"))
        rows.append({"model": _name(name, stale), "rounded": m["qwk_rounded"], "in-sample": m["qwk_insample"],
                     "nested": m["qwk_nested"], "interval": _interval(m, "qwk_nested"),
                     "rounded (other)": m.get("qwk_rounded_other"), "nested (other)": m.get("qwk_nested_other"),
                     "interval (other)": _interval(m, "qwk_nested_other"), "train seconds": seconds})
    folds = pd.DataFrame({name: m["per_fold"] for name, m in models.items()}).T
    folds.columns = [f"fold {c}" for c in folds.columns]
    folds.insert(0, "model", [_name(n, stale) for n in folds.index])
    level = next((m["interval_level"] for m in models.values() if m.get("interval_level")), None)
    intervals = f"; intervals: {level:.0%} bootstrap (essays resampled within folds)" if level else ""
    return ("<p>OOF QWK of each model: rounded predictions, thresholds fitted on all rows (in-sample), and "
            f"thresholds fitted on the other folds (nested, the honest figure){intervals}.</p>"
            + _table(pd.DataFrame(rows), formats={"train seconds": ".1f"}, html_columns=("model",))
            + "<h3>Nested QWK per fold</h3>" + _table(folds, html_columns=("model",)) + _other_runs_note({n: stale[n] for n in models if n in stale}, shown=True))


def _interval(values: dict, key: str) -> str:
    low, high = values.get(f"{key}_low"), values.get(f"{key}_high")
    return "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def _ensemble_table(metrics: dict, stale: Mapping[str, str]) -> pd.DataFrame:
    """One row per method (then per model): nested QWK with its bootstrap interval, in-sample QWK, target weight
    and the paired difference to the selected method."""
    methods = metrics.get("methods", {})
    intervals = {r["name"]: r for r in metrics.get("intervals", {}).get("rows", [])}
    rows = []
    for name in [*methods, *(n for n in intervals if n not in methods)]:
        m, r = methods.get(name, {}), intervals.get(name, {})
        model = name.removeprefix("model:")
        label = _name(model, stale, shown=name) if model != name else html.escape(name)
        rows.append({
            "method or model": f"<b>{label}</b> (selected)" if name == metrics.get("selected") else label,
            "nested (all)": r.get("qwk_all", m.get("qwk_nested")), "interval (all)": _interval(r, "qwk_all"),
            "nested (other)": r.get("qwk_other", m.get("qwk_nested_other")),
            "interval (other)": _interval(r, "qwk_other"),
            "in-sample (all)": m.get("qwk_insample"), "in-sample (other)": m.get("qwk_insample_other"),
            "target weight": m.get("target_weight"), "minus selected": r.get("diff_vs_selected"),
            "paired interval": "" if r.get("diff_low") is None else f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}]",
        })
    return pd.DataFrame(rows)


def section_ensemble(out: Path) -> str:
    metrics = _json(out / "ensemble" / "metrics.json")
    if metrics is None:
        return _missing("04_ensemble has not run: no output/ensemble/metrics.json")
    stale = other_runs(out)
    frontier_file = out / "ensemble" / "frontier.csv"
    frontier = ""
    if frontier_file.is_file():
        f = pd.read_csv(frontier_file, dtype={"target_weight": str})
        order = list(dict.fromkeys(f["target_weight"]))
        wide = f.pivot(index="target_weight", columns="method", values=["qwk_all", "qwk_other"]).reindex(order)
        wide.columns = [f"{m} ({'all' if k == 'qwk_all' else 'other'})" for k, m in wide.columns]
        frontier = ("<h3>Target frontier</h3><p>Nested QWK on all rows and on other-origin rows of each method at each "
                    "weight of other-origin rows; 'chosen': the weight chosen by nested CV inside each training "
                    "split (the figures above).</p>" + _table(wide.reset_index()))
    intervals = metrics.get("intervals", {})
    level = intervals.get("level")
    about = (f" Intervals: {level:.0%} bootstrap (essays resampled within folds, {intervals.get('draws')} draws); "
             "'minus selected': paired difference on the rows the method is selected on (ensemble.selection=simplest "
             "keeps a simpler method unless that interval lies below 0)." if level else "")
    other = metrics.get("qwk_nested_other")
    return (_ensemble_note(_stale_ensemble(out, stale))
            + f"<p>Selected: <b>{html.escape(str(metrics['selected']))}</b> by nested QWK on "
            f"{html.escape(str(metrics.get('select_on')))} rows: {metrics['qwk_nested']:.4f} "
            f"(other-origin {'n/a' if other is None else f'{other:.4f}'}); target "
            f"{html.escape(str(metrics.get('target')))}, weight of other-origin rows "
            f"{html.escape(str(metrics.get('target_weight')))}. "
            f"{html.escape(str(metrics.get('selection_reason', '')))}.{about}</p>"
            + _table(_ensemble_table(metrics, stale), html_columns=("method or model",))
            + frontier + _plots([_img(p) for p in sorted((out / "ensemble" / "plots").glob("*.png"))]))


def section_confusion(out: Path) -> str:
    plots = sorted((out / "thresholds" / "plots").glob("*.png"))
    if not plots:
        return _missing("no per-model plots in output/thresholds/plots")
    stale = other_runs(out)
    marked = {n: stale[n] for n in _models(out) if n in stale}
    images = []
    for path in plots:
        owner = next((n for n in marked if path.stem.startswith(f"{n}_")), None)
        images.append(_img(path, _name(owner, marked) if owner else ""))
    return _plots(images) + _other_runs_note(marked, shown=True)


def section_groups(out: Path) -> str:
    models = _models(out)
    if not models:
        return _missing("no per-model reports")
    stale = other_runs(out)
    folds = _folds(out)
    ensemble = _json(out / "ensemble" / "metrics.json") or {}
    ensemble_groups = ensemble.get("per_group", {})
    ensemble_column = f"ensemble ({ensemble.get('selected')})"
    headers = {name: _name(name, stale) for name in models}
    headers[ensemble_column] = html.escape(ensemble_column) + (
        _badge("built on models of another run") if _stale_ensemble(out, stale) else "")
    parts = []
    for key, title in (("prompt_name", "prompt"), ("prompt_cluster", "prompt cluster"), ("origin", "origin")):
        table = {name: m.get("per_group", {}).get(key) for name, m in models.items()}
        table = {n: v for n, v in table.items() if v}
        if not table:
            continue
        frame = pd.DataFrame(table)
        frame.loc["all rows"] = pd.Series({n: models[n]["qwk_nested"] for n in table})
        if key in ensemble_groups:
            frame.insert(0, ensemble_column, pd.Series({**ensemble_groups[key], "all rows": ensemble["qwk_nested"]}))
        if folds is not None and key in folds.columns:
            counts = {**folds[key].value_counts().to_dict(), "all rows": len(folds)}
            frame.insert(0, "n", pd.Series(counts).astype("Int64"))
        parts.append(f"<h3>Nested QWK per {title}</h3>" + _table(frame.rename_axis(title).reset_index(), headers=headers))
    if not parts:
        return _missing("no per-group QWK in the model reports")
    if ensemble and not ensemble_groups:
        parts.insert(0, '<p class="note">No ensemble column: output/ensemble/metrics.json holds no '
                        "<code>per_group</code> (the selected ensemble's nested QWK per prompt and origin), so the "
                        "tables show the models only.</p>")
    parts.insert(0, "<p>Nested (held-out) QWK; <b>n</b>: the train essays of each group.</p>")
    return "".join(parts) + _other_runs_note({n: stale[n] for n in models if n in stale}, shown=True)


def section_thresholds(out: Path) -> str:
    stale = other_runs(out)
    rows = [{"model": _name(name, stale), **{f"t{i + 1}": t for i, t in enumerate(m["thresholds"])}}
            for name, m in _models(out).items()]
    spec = _json(out / "ensemble" / "artifacts" / "ensemble.json")
    if spec:
        badge = _badge("built on models of another run") if _stale_ensemble(out, stale) else ""
        rows.append({"model": f"ensemble ({html.escape(str(spec['selected']))}){badge}",
                     **{f"t{i + 1}": t for i, t in enumerate(spec["thresholds"])}})
    return _table(pd.DataFrame(rows), ".3f", html_columns=("model",)) if rows else _missing("no thresholds")


def section_weights(out: Path) -> str:
    spec = _json(out / "ensemble" / "artifacts" / "ensemble.json")
    if spec is None:
        return _missing("no ensemble artifacts")
    rows = [{"method": name, **(m.get("weights") or {})} for name, m in spec["methods"].items() if m.get("weights")]
    note = _ensemble_note(_stale_ensemble(out, other_runs(out)))
    return note + (_table(pd.DataFrame(rows), ".3f") if rows else _missing("no blend weights"))


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


def build_report(out: Path) -> str:
    """The report's HTML for the run under `out`."""
    titles = {"data": "Data", "folds": "Folds", "models": "Models: OOF QWK", "ensemble": "Ensemble",
              "confusion": "Confusion matrices and predictions", "groups": "QWK per prompt and origin",
              "thresholds": "Thresholds", "weights": "Blend weights", "curves": "Training curves",
              "pseudo": "MLM and pseudo-labels", "inference": "Inference",
              "distribution": "Score distribution: train, OOF, submission", "runtime": "Runtime per stage"}
    body = []
    for key in SECTIONS:
        content = globals()[f"section_{key}"](out)
        body.append(f'<section id="{key}"><h2>{titles[key]}</h2>\n{content}\n</section>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>aes-pipeline run report</title>"
            f"<style>{STYLE}</style></head><body><h1>aes-pipeline run report</h1>"
            f"<p>Run folder: <code>{html.escape(str(out))}</code></p>" + "\n".join(body) + "</body></html>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="the run's output folder (default: paths.output of --params)")
    parser.add_argument("--params", default="params.yaml", help="params file naming the run (default: params.yaml)")
    parser.add_argument("--to", default=None, help="HTML file to write (default: <output>/report/index.html)")
    args = parser.parse_args(argv)
    try:
        out = Path(args.output) if args.output else load_params(args.params).output_dir
    except ParamsError as exc:
        print(f"error: {exc}; or name the run's folder: --output DIR (make report OUT=DIR)", file=sys.stderr)
        return 2
    if not (out / "prepare").is_dir():
        print(f"{out} holds no run (no prepare/ folder): run `make demo` or `dvc repro` first, or name the run's "
              "folder: make report OUT=DIR (--output DIR)", file=sys.stderr)
        return 2
    target = Path(args.to) if args.to else out / "report" / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        tmp.write_text(build_report(out), encoding="utf-8")
    print(f"report written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
