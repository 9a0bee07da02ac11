"""Stage 03_oof_thresholds (`03_oof_thresholds/run.py` calls `fit_thresholds`): per-model QWK thresholds fitted on
the OOF predictions, each model's honest (nested) scores, bootstrap intervals and plots, written in one staged step."""

from __future__ import annotations

import logging

from common.config.params import Params
from common.core.io import staged_dir, write_json
from common.core.tracking import write_headline
from common.scoring.oof import load_oof_predictions, model_report
from common.scoring.reports import plot_confusion, plot_pred_vs_true
from common.scoring.thresholds import apply_thresholds

log = logging.getLogger("aes.thresholds")


def fit_thresholds(params: Params) -> None:
    """Reads output/prepare/folds.parquet and output/train/<model>/oof.parquet; writes output/thresholds/ (<model>.json,
    plots/) and output/metrics/thresholds.json."""
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

