"""Stage 00_prepare: validate inputs, match essays to the external corpus, recover prompts, make folds.

Run from the repository root: python 00_prepare/run.py [dotted.key=value ...]
Writes output/prepare/: folds.parquet, external.parquet, test_prompts.parquet, metrics.json, plots/.
"""

import logging
import sys

try:
    from common.config.layout import stage_timings
    from common.config.params import Params
    from common.config.stage import exit_with
    from common.core.io import staged_dir, write_json, write_parquet
    from common.core.tracking import write_headline
    from common.prepare.data import load_competition_data
    from common.prepare.prepare import prepare
    from common.scoring.reports import plot_score_distribution
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)

log = logging.getLogger("aes.prepare")


def main(params: Params) -> None:
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


if __name__ == "__main__":
    exit_with(main, __doc__)
