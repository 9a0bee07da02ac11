"""The run report's sections on the data and the fitted results: data, folds, models, ensemble, confusion
matrices, QWK per prompt and origin, thresholds and blend weights.

Each `section_<key>(out)` returns the HTML of one section of common.tools.run_report from the outputs of
00_prepare, 03_oof_thresholds and 04_ensemble under `out`, or a note that the stage has not run.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from common.tools.report_html import _img, _json, _missing, _plots, _table
from common.tools.report_runs import (
    _badge,
    _ensemble_note,
    _folds,
    _models,
    _name,
    _other_runs_note,
    _stale_ensemble,
    other_runs,
)


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
