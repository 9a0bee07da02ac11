"""Stage 01_pseudo_label: leak-free soft pseudo-labels on the external corpus.

Run from the repository root: python 01_pseudo_label/run.py [dotted.key=value ...]
For every fold k, the fold-k model of `pseudo.teacher` (trained by 02_train without fold k) predicts
every external essay (output/prepare/external.parquet: corpus essays that match no train essay); its
predictions become soft labels (class probabilities, or a normal spread of a regression prediction).
Writes output/pseudo/fold_<k>.parquet (essay_id, prob_1..prob_6, expected, teacher, teacher_fold),
report.csv (pseudo-label vs train score distribution per prompt) and plots/. Only fold k's students
read fold_<k>.parquet. MLM domain adaptation is the separate script 01_pseudo_label/mlm.py.
"""

import logging

import pandas as pd

from common.config import Params
from common.data import load_competition_data
from common.inference import TokenCache, inference_devices, predict_fold_model
from common.io import staged_dir, write_csv, write_json, write_parquet
from common.oof import read_folds
from common.pseudo import PROB_COLUMNS, distribution_report, drop_train_copies, pseudo_frame, soft_labels
from common.reports import plot_bars
from common.stage import PipelineError, exit_with

log = logging.getLogger("aes.pseudo")


def main(params: Params) -> None:
    out, p, prep = params.output_dir, params.pseudo, params.prepare
    folds = read_folds(out / "prepare" / "folds.parquet")
    external_path = out / "prepare" / "external.parquet"
    if not external_path.is_file():
        raise FileNotFoundError(f"{external_path} not found: run 00_prepare first (python 00_prepare/run.py)")
    external = pd.read_parquet(external_path)
    train = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file).train
    keep = drop_train_copies(external["full_text"].tolist(), train["full_text"].tolist())
    if (~keep).any():
        log.warning("%d external essays equal train essays after normalisation: not labelled", int((~keep).sum()))
    external = external[keep].reset_index(drop=True)
    if external.empty:
        raise PipelineError(f"{external_path}: no external essays to pseudo-label")
    teacher_dir = out / "train" / p.teacher
    fold_ids = sorted(folds["fold"].unique().tolist())
    missing = [k for k in fold_ids if not (teacher_dir / f"fold_{k}" / "scorer.json").is_file()]
    if missing:
        raise PipelineError(f"teacher {p.teacher!r} has no trained model for fold(s) {missing} in {teacher_dir}: "
                            f"train it first (python 02_train/run.py train.model={p.teacher})")
    devices = inference_devices(params.train.device)
    cache = TokenCache(external["full_text"].tolist())
    with staged_dir(out / "pseudo") as tmp:
        summary = {}
        for k in fold_ids:
            fold_dir = teacher_dir / f"fold_{k}"
            ids, collator = cache.get(fold_dir)
            preds, probs = predict_fold_model(fold_dir, ids, collator, devices, "auto", params.infer.batch_tokens,
                                              desc=f"teacher fold {k}")
            frame = pseudo_frame(external["essay_id"], soft_labels(preds, probs, p.regression_sigma), p.teacher, k)
            write_parquet(tmp / f"fold_{k}.parquet", frame)
            summary[str(k)] = {"n": len(frame), "mean_expected": float(frame["expected"].mean())}
            log.info("fold %d: %d essays labelled by %s fold %d, mean expected score %.2f", k, len(frame),
                     p.teacher, k, frame["expected"].mean())
        report = distribution_report(frame, external, folds)
        write_csv(tmp / "report.csv", report)
        write_json(tmp / "metrics.json", {"teacher": p.teacher, "n_external": len(external), "folds": summary,
                                          "train_mean_score": float(folds["score"].mean())})
        shares = frame[PROB_COLUMNS].mean()
        train_shares = folds["score"].value_counts(normalize=True).sort_index()
        plot_bars({**{f"pseudo {c[-1]}": float(v) for c, v in shares.items()},
                   **{f"train {s}": float(v) for s, v in train_shares.items()}},
                  tmp / "plots" / "distribution.png", "Score shares: pseudo-labels (last fold) vs train", "share")


if __name__ == "__main__":
    exit_with(main, __doc__)
