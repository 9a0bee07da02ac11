"""Stage 05_infer (`05_infer/run.py` calls `infer_submission`, on Kaggle as locally): every fold model of the
selected ensemble predicts the test essays, the ensemble combines them, and submission.csv is written (locally also
output/infer/ with the per-model predictions and the runtime estimate)."""

from __future__ import annotations

import logging
import time

import numpy as np

from common.config.layout import stage_timings
from common.config.params import Params
from common.core.devices import inference_devices
from common.core.io import write_json
from common.core.logs import format_hours
from common.infer.artifacts import ArtifactSet
from common.infer.inference import (
    correct_spread,
    ensemble_scores,
    predict_models,
    prediction_frame,
    spread,
)
from common.infer.runtime import estimate_runtime
from common.infer.submission import make_submission, read_test, resolve_paths, write_outputs

log = logging.getLogger("aes.infer")


def infer_submission(params: Params) -> None:
    """Locally: paths.input/test.csv and the artifacts under paths.output -> output/submission.csv; on Kaggle
    (<infer.kaggle_root>/input exists): the competition folder and the artifacts dataset -> /kaggle/working."""
    p = params.infer
    paths = resolve_paths(params)
    log.info("%s run: test %s, artifacts %s", "Kaggle" if paths.on_kaggle else "local", paths.test, paths.artifacts)
    artifacts = ArtifactSet.open(paths.artifacts)
    test, sample = read_test(paths.test, paths.sample_submission)
    texts = test["full_text"].tolist()
    devices = inference_devices(p.device)
    log.info("ensemble %s of %s x %d folds on %s", artifacts.spec["selected"], artifacts.models, len(artifacts.folds),
             ", ".join(str(d) for d in devices))
    mean_tokens = float(np.mean([min(len(t.split()) * 1.3 + 2, 1e9) for t in texts]))
    plan = estimate_runtime(artifacts, mean_tokens, p.expected_essays, None, p.time_limit_hours)
    log.info("runtime estimate for %d essays with %d fold models on a T4: %s (limit %.0f h)",
             plan["n_essays"], plan["n_fold_models"], format_hours(plan["t4_hours"]), p.time_limit_hours)
    if not plan["within_limit"]:
        log.warning("the estimate exceeds Kaggle's %.0f h limit: drop folds or models, or lower max_length",
                    p.time_limit_hours)

    start = time.perf_counter()
    predictions = predict_models(artifacts, texts, devices, p.precision, p.batch_tokens)
    seconds = time.perf_counter() - start
    spreads = {name: spread(folds) for name, folds in predictions.fold_preds.items() if len(folds) > 1}
    for name, s in spreads.items():
        log.info("%s: test predictions of single fold models spread %.4f, their mean %.4f (factor %.4f)%s", name,
                 s["fold_std"], s["mean_std"], s["factor"], ", corrected" if p.spread_correction else "")
    used = correct_spread(predictions) if p.spread_correction else predictions
    continuous, scores = ensemble_scores(artifacts, used, texts)
    submission = make_submission(sample, test["essay_id"].to_numpy(), scores)
    measured = estimate_runtime(artifacts, mean_tokens, p.expected_essays,
                                len(texts) * len(artifacts.folds) * len(artifacts.models) / seconds, p.time_limit_hours)
    log.info("%d essays in %.1f s: %d essays for the ensemble would take %s on this machine", len(texts),
             seconds, p.expected_essays, format_hours(measured["this_device_hours"]))
    if paths.on_kaggle:
        write_outputs(paths.submission, submission)
    else:
        estimate = {k: v for k, v in measured.items() if k != "this_device_hours"}
        write_outputs(paths.submission, submission, params.output_dir / "infer", {
            "n_essays": len(texts), "devices": [str(d) for d in devices], "runtime_estimate": estimate,
            "score_counts": {str(k): int(v) for k, v in submission["score"].value_counts().sort_index().items()},
            "mean_prediction": float(np.mean(continuous)),
            "spread": spreads, "spread_correction": p.spread_correction,
        }, prediction_frame(test["essay_id"].to_numpy(), predictions))
        write_json(stage_timings(params.output_dir, "infer"), {  # changes from run to run: not in metrics
            "seconds": seconds, "model_seconds": predictions.seconds,
            "this_device_hours": measured["this_device_hours"]})
    log.info("wrote %s: %d essays, scores %s", paths.submission, len(submission),
             submission["score"].value_counts().sort_index().to_dict())
