"""The run report: one self-contained HTML page (plots inlined) from a finished run's outputs.

    python -m common.tools.run_report [--output output] [--to output/report/index.html]     (make report)

It reads only what the stages declare as outputs (and `runtime.jsonl`, which every stage appends to):
data overview, folds, per-model and ensemble QWK (rounded, in-sample, nested; all rows and other-origin
rows), confusion matrices, per-prompt and per-origin QWK, thresholds, blend weights, training curves,
MLM and pseudo-labels, inference, and the runtime of each stage. Sections whose stage has not run say so.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from common.folds import folds_fingerprint
from common.io import atomic_write
from common.layout import stage_timings
from common.stage import RUNTIME_LOG

SECTIONS = ("data", "folds", "models", "ensemble", "confusion", "groups", "thresholds", "weights", "curves",
            "pseudo", "inference", "runtime")
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:520px;margin:4px}
.missing{color:#a33}h2{border-bottom:1px solid #ddd;margin-top:2em}"""


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fig(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="", border=0,
                         escape=True)


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)}</p>'


def section_data(out: Path) -> str:
    metrics = _json(out / "prepare" / "metrics.json")
    if metrics is None:
        return _missing("00_prepare has not run: no output/prepare/metrics.json")
    origin = metrics.get("origin", {})
    rows = [("train essays", metrics.get("n_train")), ("test essays", metrics.get("n_test")),
            ("corpus essays", metrics.get("n_corpus")), ("external essays (no train match)", metrics.get("n_external")),
            ("train in corpus (persuade origin)", origin.get("persuade")), ("other origin", origin.get("other")),
            ("prompt clusters", metrics.get("clusters", {}).get("n_clusters"))]
    parts = [_table(pd.DataFrame(rows, columns=["", "count"]))]
    parts += [_img(p) for p in sorted((out / "prepare" / "plots").glob("*.png"))]
    sizes = metrics.get("clusters", {}).get("train_sizes")
    if sizes:
        parts.append(_table(pd.DataFrame(sorted(sizes.items()), columns=["prompt cluster", "train essays"])))
    return "\n".join(parts)


def section_folds(out: Path) -> str:
    path = out / "prepare" / "folds.parquet"
    if not path.is_file():
        return _missing("no folds.parquet")
    folds = pd.read_parquet(path)
    table = folds.groupby("fold").agg(essays=("essay_id", "size"), mean_score=("score", "mean"),
                                      other_share=("origin", lambda s: float((s == "other").mean())),
                                      prompts=("prompt_cluster", "nunique")).reset_index()
    shares = pd.crosstab(folds["fold"], folds["score"], normalize="index").reset_index()
    shares.columns = ["fold", *[f"score {c}" for c in shares.columns[1:]]]
    return _table(table, 3) + _table(shares, 3)


def _models(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "thresholds").glob("*.json"))}


def other_runs(out: Path) -> dict[str, str]:
    """Model folders under train/ that this run's folds did not make: name -> why (the report skips them)."""
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


def _other_runs_note(out: Path) -> str:
    stale = other_runs(out)
    if not stale:
        return ""
    items = ", ".join(f"<b>{html.escape(n)}</b> ({html.escape(why)})" for n, why in stale.items())
    return f'<p class="stale">Not part of this run, so not shown: {items}.</p>'


def section_models(out: Path) -> str:
    models = _models(out)
    if not models:
        return _missing("03_oof_thresholds has not run: no output/thresholds/<model>.json")
    rows = []
    for name, m in models.items():
        seconds = sum((_json(p) or {}).get("seconds", 0) for p in (out / "timings" / name).glob("*.json"))
        rows.append({"model": name, "rounded": m["qwk_rounded"], "in-sample": m["qwk_insample"],
                     "nested": m["qwk_nested"], "interval": _interval(m, "qwk_nested"),
                     "rounded (other)": m.get("qwk_rounded_other"), "nested (other)": m.get("qwk_nested_other"),
                     "interval (other)": _interval(m, "qwk_nested_other"), "train seconds": seconds})
    folds = pd.DataFrame({name: m["per_fold"] for name, m in models.items()}).T.reset_index()
    folds.columns = ["model", *[f"fold {c}" for c in folds.columns[1:]]]
    return ("<p>OOF QWK of each model: rounded predictions, thresholds fitted on all rows (in-sample), and "
            "thresholds fitted on the other folds (nested, the honest figure).</p>"
            + _table(pd.DataFrame(rows)) + "<h3>Nested QWK per fold</h3>" + _table(folds) + _other_runs_note(out))


def _interval(values: dict, key: str) -> str:
    low, high = values.get(f"{key}_low"), values.get(f"{key}_high")
    return "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def section_ensemble(out: Path) -> str:
    metrics = _json(out / "ensemble" / "metrics.json")
    if metrics is None:
        return _missing("04_ensemble has not run: no output/ensemble/metrics.json")
    rows = [{"method": name, **values} for name, values in metrics.get("methods", {}).items()]
    intervals = metrics.get("intervals", {})
    table = pd.DataFrame([{
        "method or model": r["name"], "nested (all)": r.get("qwk_all"), "interval (all)": _interval(r, "qwk_all"),
        "nested (other)": r.get("qwk_other"), "interval (other)": _interval(r, "qwk_other"),
        "minus selected": r.get("diff_vs_selected"),
        "paired interval": "" if r.get("diff_low") is None else f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}]",
    } for r in intervals.get("rows", [])])
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
    level = intervals.get("level")
    return (f"<p>Selected: <b>{html.escape(str(metrics['selected']))}</b> by nested QWK on "
            f"{html.escape(str(metrics.get('select_on')))} rows: {metrics['qwk_nested']:.4f} "
            f"(other-origin {metrics.get('qwk_nested_other') or float('nan'):.4f}); target "
            f"{html.escape(str(metrics.get('target')))}, weight of other-origin rows "
            f"{html.escape(str(metrics.get('target_weight')))}. "
            f"{html.escape(str(metrics.get('selection_reason', '')))}.</p>"
            + _table(pd.DataFrame(rows))
            + (f"<h3>Intervals</h3><p>{level:.0%} bootstrap intervals (essays resampled within folds, "
               f"{intervals.get('draws')} draws); 'minus selected': paired difference on the rows the method is "
               "selected on (ensemble.selection=simplest keeps a simpler method unless that interval lies below 0).</p>"
               + _table(table) if level else "")
            + frontier + "".join(_img(p) for p in sorted((out / "ensemble" / "plots").glob("*.png"))))


def section_confusion(out: Path) -> str:
    plots = sorted((out / "thresholds" / "plots").glob("*.png"))
    return "".join(_img(p) for p in plots) if plots else _missing("no per-model plots in output/thresholds/plots")


def section_groups(out: Path) -> str:
    models = _models(out)
    if not models:
        return _missing("no per-model reports")
    parts = []
    for key, title in (("prompt_name", "prompt"), ("prompt_cluster", "prompt cluster"), ("origin", "origin")):
        table = {name: m.get("per_group", {}).get(key) for name, m in models.items()}
        table = {n: v for n, v in table.items() if v}
        if table:
            frame = pd.DataFrame(table).reset_index().rename(columns={"index": title})
            parts.append(f"<h3>Nested QWK per {title}</h3>" + _table(frame))
    return "".join(parts) or _missing("no per-group QWK in the model reports")


def section_thresholds(out: Path) -> str:
    rows = [{"model": name, **{f"t{i + 1}": t for i, t in enumerate(m["thresholds"])}}
            for name, m in _models(out).items()]
    spec = _json(out / "ensemble" / "artifacts" / "ensemble.json")
    if spec:
        rows.append({"model": f"ensemble ({spec['selected']})",
                     **{f"t{i + 1}": t for i, t in enumerate(spec["thresholds"])}})
    return _table(pd.DataFrame(rows), 3) if rows else _missing("no thresholds")


def section_weights(out: Path) -> str:
    spec = _json(out / "ensemble" / "artifacts" / "ensemble.json")
    if spec is None:
        return _missing("no ensemble artifacts")
    rows = [{"method": name, **(m.get("weights") or {})} for name, m in spec["methods"].items() if m.get("weights")]
    return _table(pd.DataFrame(rows), 3) if rows else _missing("no blend weights")


def section_curves(out: Path) -> str:
    parts = []
    stale = other_runs(out)
    for log_path in sorted((out / "train").glob("*/log.csv")):
        if log_path.parent.name in stale:
            continue
        log = pd.read_csv(log_path)
        fig, (ax_loss, ax_qwk) = plt.subplots(1, 2, figsize=(9, 3))
        for fold, group in log.groupby("fold"):
            ax_loss.plot(group["step"], group["train_loss"], label=f"fold {fold}", lw=1)
            evals = group.dropna(subset=["eval_qwk"])
            ax_qwk.plot(evals["step"], evals["eval_qwk"], marker=".", label=f"fold {fold}", lw=1)
        ax_loss.set(title=f"{log_path.parent.name}: train loss", xlabel="step")
        ax_qwk.set(title="held-out QWK (rounded)", xlabel="step")
        ax_qwk.legend(fontsize=7)
        parts.append(_fig(fig))
    return ("".join(parts) or _missing("02_train has not written any log.csv")) + _other_runs_note(out)


def section_pseudo(out: Path) -> str:
    parts = []
    stale = other_runs(out)
    for folder in sorted(p for p in (out / "train").glob("*") if p.is_dir() and p.name not in stale):
        mlm = (_json(folder / "metrics.json") or {}).get("mlm")
        if mlm:
            parts.append(f"<p>{html.escape(folder.name)}: MLM domain adaptation, held-out loss "
                         f"{mlm['held_out_loss_before']:.4f} -> {mlm['held_out_loss_after']:.4f} on "
                         f"{mlm['n_essays']} essays.</p>")
    for report in sorted((out / "pseudo").glob("*/report.csv")):
        student = report.parent.name
        if student in stale:
            continue
        frame = pd.read_csv(report)
        keep = ["prompt_name", "n_pseudo", "n_train", "pseudo_mean", "train_mean"]
        teacher = (_json(report.parent / "metrics.json") or {}).get("teacher", "?")
        parts.append(f"<p>Pseudo-labels of {html.escape(student)} (teacher {html.escape(str(teacher))}, last fold) "
                     "vs train scores, per prompt:</p>" + _table(frame[[c for c in keep if c in frame.columns]], 3))
        parts += [_img(p) for p in sorted((report.parent / "plots").glob("*.png"))]
    return "".join(parts) or _missing("01_pseudo_label has not run")


def section_inference(out: Path) -> str:
    metrics = _json(out / "infer" / "metrics.json")
    if metrics is None:
        return _missing("05_infer has not run locally")
    estimate = metrics["runtime_estimate"]
    timings = _json(stage_timings(out, "infer")) or {}
    counts = pd.DataFrame(sorted(metrics["score_counts"].items()), columns=["score", "essays"])
    took = f" in {timings['seconds']:.1f} s" if "seconds" in timings else ""
    here = (f", {timings['this_device_hours']:.2f} h on this machine" if "this_device_hours" in timings else "")
    return (f"<p>{metrics['n_essays']} test essays{took} on {', '.join(metrics['devices'])}. "
            f"{estimate['n_essays']} essays with {estimate['n_fold_models']} fold models: "
            f"{estimate['t4_hours']:.2f} h on a T4 (FLOP estimate){here}; Kaggle limit "
            f"{estimate['limit_hours']:.0f} h.</p>" + _table(counts))


def section_runtime(out: Path) -> str:
    path = out / RUNTIME_LOG
    if not path.is_file():
        return _missing(f"no {RUNTIME_LOG}: stages record their runtime there when they finish")
    runs = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    latest = runs.assign(call=runs["args"].map(" ".join)).drop_duplicates(["stage", "call"], keep="last")
    table = latest.groupby("stage", sort=False).agg(runs=("seconds", "size"), seconds=("seconds", "sum"),
                                                    finished=("finished", "max")).reset_index()
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(table) + 1))
    ax.barh(table["stage"], table["seconds"], color="#4c72b0")
    ax.invert_yaxis()
    ax.set(xlabel="seconds (sum over the stage's latest runs)", title="Runtime per stage")
    return _table(table, 1) + _fig(fig)


def build_report(out: Path) -> str:
    """The report's HTML for the run under `out`."""
    titles = {"data": "Data", "folds": "Folds", "models": "Models: OOF QWK", "ensemble": "Ensemble",
              "confusion": "Confusion matrices and predictions", "groups": "QWK per prompt and origin",
              "thresholds": "Thresholds", "weights": "Blend weights", "curves": "Training curves",
              "pseudo": "MLM and pseudo-labels", "inference": "Inference", "runtime": "Runtime per stage"}
    body = []
    for key in SECTIONS:
        content = globals()[f"section_{key}"](out)
        body.append(f'<section id="{key}"><h2>{titles[key]}</h2>\n{content}\n</section>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>aes-pipeline run report</title>"
            f"<style>{STYLE}</style></head><body><h1>aes-pipeline run report</h1>"
            f"<p>Run folder: <code>{html.escape(str(out))}</code></p>" + "\n".join(body) + "</body></html>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output", help="the run's output folder (paths.output)")
    parser.add_argument("--to", default=None, help="HTML file to write (default: <output>/report/index.html)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if not (out / "prepare").is_dir():
        print(f"{out} holds no run (no prepare/ folder): run `make demo` or `dvc repro` first", file=sys.stderr)
        return 2
    target = Path(args.to) if args.to else out / "report" / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        tmp.write_text(build_report(out), encoding="utf-8")
    print(f"report written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
