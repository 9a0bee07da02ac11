"""Stage 00_prepare (`00_prepare/run.py` calls `prepare_inputs`): read and check the competition files, recover the
prompts, make the folds, and write output/prepare/ in one staged step (a crash leaves the last good folder)."""

from __future__ import annotations

import logging

from common.config.layout import stage_timings
from common.config.params import Params
from common.core.io import staged_dir, write_json, write_parquet
from common.core.tracking import write_headline
from common.prepare.data import load_competition_data
from common.prepare.plots import plot_score_distribution
from common.prepare.prepare import prepare

log = logging.getLogger("aes.prepare")


def prepare_inputs(params: Params) -> None:
    """Writes output/prepare/: folds.parquet, external.parquet, test_prompts.parquet, metrics.json, plots/; the
    stage's time beside it (not in metrics.json: it changes from run to run) and its headline metrics."""
    p = params.prepare
    data = load_competition_data(
        params.input_dir, p.train_file, p.test_file, p.sample_submission_file, p.external_file
    )
    result = prepare(data, p, seed=params.seed)
    seconds = result.metrics.pop("seconds")  # changes from run to run: kept out of metrics.json
    out = params.output_dir / "prepare"
    with staged_dir(out) as tmp:
        write_parquet(tmp / "folds.parquet", result.folds)
        write_parquet(tmp / "external.parquet", result.external)
        write_parquet(tmp / "test_prompts.parquet", result.test_prompts)
        write_json(tmp / "metrics.json", result.metrics)
        plot_score_distribution(result.folds, "fold", tmp / "plots" / "score_by_fold.png", "Score share per fold")
        plot_score_distribution(
            result.folds, "prompt_name", tmp / "plots" / "score_by_prompt.png", "Score share per prompt"
        )
    write_json(stage_timings(params.output_dir, "prepare"), {"seconds": seconds})
    m = result.metrics
    write_headline(params.metrics_dir / "prepare.json", {
        "n_train": m["n_train"], "n_test": m["n_test"], "n_external": m["n_external"],
        "n_other": m["origin"]["other"], "n_clusters": m["clusters"]["n_clusters"],
        "cluster_purity": m["clusters"]["purity"], "fold_score_share_max_deviation": m["folds"]["score_share_max_deviation"]})
    log.info("wrote %s (%d train essays in %d folds)", out, len(result.folds), p.n_folds)
