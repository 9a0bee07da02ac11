"""Stage 01_pseudo_label: leak-free soft pseudo-labels on the external corpus, one student at a time.

Run from the repository root: python 01_pseudo_label/run.py [train.model=STUDENT] [dotted.key=value ...]
For each student of train.students (or only train.model), fold k of its `teacher` (trained by 02_train
without fold k) predicts every external essay (output/prepare/external.parquet: corpus essays that match no
train essay); the predictions become soft labels (class probabilities, or a normal spread of a regression
prediction). Writes output/pseudo/<student>/fold_<k>.parquet (essay_id, prob_1..prob_6, expected,
teacher, teacher_fold), report.csv (pseudo-label vs train score distribution per prompt), metrics.json
and plots/. Only the student's fold k reads fold_<k>.parquet. A student with mlm.epochs > 0 adapts its
backbone in 02_train (python 01_pseudo_label/mlm.py does it ahead of time).
"""

import logging

from common.config import Params
from common.stage import PipelineError, exit_with

log = logging.getLogger("aes.pseudo")


def main(params: Params) -> None:
    from common.data import load_competition_data
    from common.folds import folds_fingerprint
    from common.inference import TokenCache, inference_devices, predict_fold_model
    from common.io import staged_dir, write_csv, write_json, write_parquet
    from common.layout import fold_dir, pseudo_dir
    from common.oof import read_folds
    from common.pseudo import (
        PROB_COLUMNS,
        distribution_report,
        drop_train_copies,
        pseudo_frame,
        read_external,
        soft_labels,
    )
    from common.reports import plot_bars
    from common.train_stage import trained_config

    out, prep, t = params.output_dir, params.prepare, params.train
    students = {n: s for n, s in t.students.items() if not t.model or n == t.model}
    if t.model and not students:
        raise PipelineError(f"train.model={t.model!r} is not a student (train.students: "
                            f"{', '.join(t.students) or 'none'}); only students get pseudo-labels")
    if not students:
        log.info("no model in train.students: no pseudo-labels to make")
        return
    folds = read_folds(out / "prepare" / "folds.parquet")
    external_path = out / "prepare" / "external.parquet"
    external = read_external(external_path)
    train = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file).train
    keep = drop_train_copies(external["full_text"].tolist(), train["full_text"].tolist())
    if (~keep).any():
        log.warning("%d external essays equal train essays after normalisation: not labelled", int((~keep).sum()))
    external = external[keep].reset_index(drop=True)
    if external.empty:
        raise PipelineError(f"{external_path}: no external essays to pseudo-label")
    fold_ids = sorted(folds["fold"].unique().tolist())
    current = folds_fingerprint(folds)
    devices = inference_devices(t.device)
    cache = TokenCache(external["full_text"].tolist())
    for student, spec in students.items():
        teacher = spec.teacher
        configs = {k: trained_config(fold_dir(out, teacher, k)) for k in fold_ids}
        missing = [k for k, c in configs.items() if c is None]
        stale = [k for k, c in configs.items() if c is not None and c.get("folds") != current]
        if missing or stale:
            what = "; ".join(p for p in (f"no trained model for fold(s) {missing}" if missing else "",
                                         f"fold(s) {stale} trained on other folds (00_prepare ran since), so they "
                                         "may have seen the essays they would label for" if stale else "") if p)
            raise PipelineError(f"teacher {teacher!r} of {student}: {what} in {fold_dir(out, teacher, 0).parent}. "
                                f"Train it first: python 02_train/run.py train.model={teacher}")
        with staged_dir(pseudo_dir(out, student)) as tmp:
            summary = {}
            for k in fold_ids:
                ids, collator = cache.get(fold_dir(out, teacher, k))
                preds, probs = predict_fold_model(fold_dir(out, teacher, k), ids, collator, devices, "auto",
                                                  params.infer.batch_tokens, desc=f"{teacher} fold {k}")
                labels = soft_labels(preds, probs, params.pseudo.regression_sigma)
                frame = pseudo_frame(external["essay_id"], labels, teacher, k)
                write_parquet(tmp / f"fold_{k}.parquet", frame)
                summary[str(k)] = {"n": len(frame), "mean_expected": float(frame["expected"].mean())}
                log.info("%s fold %d: %d essays labelled by %s fold %d, mean expected score %.2f", student, k,
                         len(frame), teacher, k, frame["expected"].mean())
            write_csv(tmp / "report.csv", distribution_report(frame, external, folds))
            write_json(tmp / "metrics.json", {"student": student, "teacher": teacher, "n_external": len(external),
                                              "folds": summary, "train_mean_score": float(folds["score"].mean()),
                                              "folds_fingerprint": current})
            shares = frame[PROB_COLUMNS].mean()
            train_shares = folds["score"].value_counts(normalize=True).sort_index()
            plot_bars({**{f"pseudo {c[-1]}": float(v) for c, v in shares.items()},
                       **{f"train {s}": float(v) for s, v in train_shares.items()}},
                      tmp / "plots" / "distribution.png",
                      f"Score shares: pseudo-labels of {student} (last fold) vs train", "share")


if __name__ == "__main__":
    exit_with(main, __doc__)
