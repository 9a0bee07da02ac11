"""Stage 03_oof_thresholds: per-model QWK thresholds fitted on OOF predictions, with honest (nested) scores.

Run from the repository root: python 03_oof_thresholds/run.py [dotted.key=value ...]
Reads output/prepare/folds.parquet and output/train/<model>/oof.parquet; writes output/thresholds/
(<model>.json, plots/) and output/metrics/thresholds.json.
"""

import logging
import sys

try:
    from common.config.params import Params
    from common.config.stage import exit_with
    from common.core.io import staged_dir, write_json
    from common.core.tracking import write_headline
    from common.scoring.oof import load_oof_predictions, model_report
    from common.scoring.reports import plot_confusion, plot_pred_vs_true
    from common.scoring.thresholds import apply_thresholds
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)

log = logging.getLogger("aes.thresholds")


def main(params: Params) -> None:
    out = params.output_dir
    oofs = load_oof_predictions(out / "train", out / "prepare" / "folds.parquet", params.ensemble.models or list(params.train.all_models))
    summary = {}
    with staged_dir(out / "thresholds") as tmp:
        for name in oofs.names:
            report = model_report(oofs, name, polish=params.thresholds.polish, n_draws=params.ensemble.bootstrap_draws,
                                  level=params.ensemble.interval_level, seed=params.seed)
            write_json(tmp / f"{name}.json", report)
            scores = apply_thresholds(oofs.preds[name], report["thresholds"])
            plot_confusion(oofs.y, scores, tmp / "plots" / f"{name}_confusion.png",
                           f"{name}: OOF, thresholds fitted on all rows")
            plot_pred_vs_true(oofs.y, oofs.preds[name], report["thresholds"],
                              tmp / "plots" / f"{name}_pred_vs_true.png", f"{name}: OOF predictions")
            summary[name] = {k: report[k] for k in (
                "qwk_rounded", "qwk_insample", "qwk_nested", "qwk_nested_low", "qwk_nested_high", "qwk_rounded_other",
                "qwk_nested_other", "qwk_nested_other_low", "qwk_nested_other_high")}
            other = report["qwk_nested_other"]
            log.info("%s: QWK rounded %.4f, in-sample %.4f, nested %.4f [%.4f, %.4f] (other-origin nested %s)", name,
                     report["qwk_rounded"], report["qwk_insample"], report["qwk_nested"], report["qwk_nested_low"],
                     report["qwk_nested_high"], "n/a" if other is None else f"{other:.4f}")
    write_json(out / "metrics" / "thresholds.json", summary)
    write_headline(params.metrics_dir / "thresholds.json",
                   {name: {k: v[k] for k in ("qwk_rounded", "qwk_nested", "qwk_nested_other")} for name, v in summary.items()})


if __name__ == "__main__":
    exit_with(main, __doc__)
