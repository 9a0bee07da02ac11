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
import html
import sys
from pathlib import Path

from common.config.fields import ParamsError
from common.config.loader import load_params
from common.core.io import atomic_write
from common.tools.report_results import (
    section_confusion,
    section_data,
    section_ensemble,
    section_folds,
    section_groups,
    section_models,
    section_thresholds,
    section_weights,
)
from common.tools.report_runtime import section_runtime
from common.tools.report_submission import section_distribution, section_inference
from common.tools.report_training import section_curves, section_pseudo

SECTIONS = ("data", "folds", "models", "ensemble", "confusion", "groups", "thresholds", "weights", "curves",
            "pseudo", "inference", "distribution", "runtime")
SECTION_HTML = {"data": section_data, "folds": section_folds, "models": section_models, "ensemble": section_ensemble,
                "confusion": section_confusion, "groups": section_groups, "thresholds": section_thresholds,
                "weights": section_weights, "curves": section_curves, "pseudo": section_pseudo,
                "inference": section_inference, "distribution": section_distribution, "runtime": section_runtime}
"""Each key of SECTIONS -> the function that returns that section's HTML from the run's folder (the report_* modules)."""
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}td{white-space:nowrap}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}img{max-width:100%}
figure{margin:0}figcaption{font-size:.9em}
.missing{color:#a33}.note{color:#555}h2{border-bottom:1px solid #ddd;margin-top:2em}
.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 5px;margin-left:4px;font-size:.8em;
font-weight:bold;white-space:nowrap}
.stale{background:#fdecea;border-left:4px solid #c0392b;padding:4px 8px}"""


def build_report(out: Path) -> str:
    """The report's HTML for the run under `out`."""
    titles = {"data": "Data", "folds": "Folds", "models": "Models: OOF QWK", "ensemble": "Ensemble",
              "confusion": "Confusion matrices and predictions", "groups": "QWK per prompt and origin",
              "thresholds": "Thresholds", "weights": "Blend weights", "curves": "Training curves",
              "pseudo": "MLM and pseudo-labels", "inference": "Inference",
              "distribution": "Score distribution: train, OOF, submission", "runtime": "Runtime per stage"}
    body = []
    for key in SECTIONS:
        content = SECTION_HTML[key](out)
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
