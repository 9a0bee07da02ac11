"""Stage 04_ensemble (`04_ensemble/run.py` calls `ensemble_models`): every blend and the stacker scored nested on the
OOF predictions (`common.ensemble.search.build_ensemble`), the selected one saved with all 05_infer needs, its report
and plots, written in one staged step."""

from __future__ import annotations

import logging

import pandas as pd

from common.config.layout import inference_units
from common.config.params import Params
from common.core.errors import PipelineError
from common.core.io import staged_dir, write_csv, write_json, write_parquet
from common.core.tracking import write_headline
from common.ensemble.ensemble_artifact import EnsembleArtifact
from common.ensemble.search import build_ensemble
from common.ensemble.target import Target
from common.prepare.data import load_competition_data
from common.scoring.metrics import qwk_by_group
from common.scoring.oof import load_oof_predictions
from common.scoring.reports import plot_bars, plot_confusion, plot_frontier, plot_intervals

log = logging.getLogger("aes.ensemble")


def ensemble_models(params: Params) -> None:
    """Reads the folds, every model's oof.parquet and (for the text and prompt features) the train essays; writes
    output/ensemble/ (artifacts/, metrics.json, oof.parquet, frontier.csv, intervals.csv, plots/)."""
    out, p = params.output_dir, params.ensemble
    oofs = load_oof_predictions(out / "train", out / "prepare" / "folds.parquet",
                                p.models or list(params.train.all_models))
    known = set(oofs.folds["prompt_name"])
    unknown = sorted(set(p.prompt_mix) - known)
    if unknown:
        raise PipelineError(f"ensemble.prompt_mix names prompt(s) {unknown} that folds.parquet does not have; its "
                            f"prompts: {sorted(known)}. Fix: use those names (or ensemble.prompt_mix={{}})")
    texts = None
    if p.text_features or p.prompt_features or p.by_prompt:
        prep = params.prepare
        train = load_competition_data(params.input_dir, prep.train_file, prep.test_file,
                                      prep.sample_submission_file).train
        texts = oofs.folds[["essay_id"]].merge(train, on="essay_id", how="left")["full_text"]
        if texts.isna().any():
            raise FileNotFoundError(
                f"{params.input_dir / prep.train_file} lacks {int(texts.isna().sum())} essays of folds.parquet: "
                "re-run 00_prepare on the same inputs")
        texts = texts.tolist()
    target = Target(p.target, tuple(p.target_weights), p.by_origin, p.by_prompt)
    result = build_ensemble(oofs, texts, target, p.stacker_objective, p.n_trials, p.prompt_mix, params.seed,
                            prompt_features=p.prompt_features, text_features=p.text_features,
                            n_draws=p.bootstrap_draws, level=p.interval_level, selection=p.selection)

    with staged_dir(out / "ensemble") as tmp:
        art = tmp / "artifacts"
        selected = result.methods[result.selected]
        fold_ids = sorted(int(k) for k in set(oofs.fold))
        members = {name: [unit.name for unit in inference_units(params.train.all_models[name], fold_ids, params.seed)]
                   for name in oofs.names if name in params.train.all_models}
        artifact = EnsembleArtifact.from_result(result, oofs.names, fold_ids, members)
        artifact.save(art)
        per_group = {key: qwk_by_group(oofs.y, selected.nested_scores, oofs.folds[key].to_numpy())
                     for key in ("prompt_name", "origin") if key in oofs.folds}
        write_json(tmp / "metrics.json", {**result.metrics, "per_group": per_group})
        write_parquet(tmp / "oof.parquet", pd.DataFrame({"essay_id": oofs.folds["essay_id"].to_numpy(),
                                                         "fold": oofs.fold, "score": selected.nested_scores}))
        write_csv(tmp / "frontier.csv", result.frontier)
        write_csv(tmp / "intervals.csv", result.intervals)
        plot_frontier(result.frontier, tmp / "plots" / "frontier.png")
        plot_intervals(result.intervals, tmp / "plots" / "intervals.png", result.selected,
                       f"Nested QWK, {p.interval_level:.0%} bootstrap intervals (essays resampled within folds)")
        for name, m in result.methods.items():
            if hasattr(m.combiner, "feature_importance"):
                top = dict(list(m.combiner.feature_importance().items())[:20])
                plot_bars(top, tmp / "plots" / f"{name}_importance.png",
                          f"{name.capitalize()}: share of split gain (top 20 features)", "share of gain")
        weights = artifact.spec["methods"][result.selected]["weights"]
        if weights:
            plot_bars(weights, tmp / "plots" / "weights.png", f"{result.selected} blend weights", "weight")
        plot_confusion(oofs.y, selected.nested_scores, tmp / "plots" / "confusion.png",
                       f"{result.selected}: nested held-out scores")
    m = result.metrics
    write_headline(params.metrics_dir / "ensemble.json", {
        "selected": m["selected"], "qwk_nested": m["qwk_nested"], "qwk_nested_other": m["qwk_nested_other"],
        "target_weight": m["target_weight"],
        "methods": {name: {"qwk_nested": v["qwk_nested"], "qwk_nested_other": v["qwk_nested_other"]}
                    for name, v in m["methods"].items()}})
    other = result.metrics["qwk_nested_other"]
    log.info("selected %s: nested QWK %.4f (other-origin %s); artifacts in %s", result.selected,
             result.metrics["qwk_nested"], "n/a" if other is None else f"{other:.4f}", out / "ensemble" / "artifacts")

