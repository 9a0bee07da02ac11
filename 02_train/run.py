"""Stage 02_train: per-fold transformer training writing out-of-fold predictions.

Run from the repository root: python 02_train/run.py [dotted.key=value ...]
  train.model=NAME      train only that model (of train.models or train.students)
  train.folds=[0,2]     train only those folds; the OOF file is written once every fold exists
  train.fold_workers=4  train 4 folds at once, one process per GPU (0: one per visible GPU)
  train.step=fit        train without collecting; train.step=collect: only write the OOF file
Writes output/train/<model>/folds/fold_<k>/ (model, tokenizer, config, held-out predictions, log), then
output/train/<model>/oof.parquet, metrics.json and log.csv. A fold already trained with the same settings
on the same folds and essays is kept; a killed run resumes from output/checkpoints/. A model with
mlm.epochs > 0 first adapts its backbone by masked-language modelling (cached in output/mlm/).
Data parallel, every GPU on one fold: accelerate launch --num_processes 2 02_train/run.py [...]
"""

import logging
import os
from pathlib import Path

from common.config import Params
from common.stage import PipelineError, exit_with

log = logging.getLogger("aes.train")


def main(params: Params) -> None:
    import torch

    from common.data import load_competition_data
    from common.folds import folds_fingerprint
    from common.layout import mlm_dir, pseudo_dir
    from common.oof import read_folds
    from common.pseudo import load_student_pseudo, read_external
    from common.train_stage import (
        adapted_backbone,
        collect_oof,
        data_parallel,
        folds_to_train,
        mlm_fingerprint,
        prune_folds,
        train_in_workers,
        train_model,
    )

    out, t, prep = params.output_dir, params.train, params.prepare
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    folds = read_folds(out / "prepare" / "folds.parquet")
    fold_ids = sorted(folds["fold"].unique().tolist())
    if len(fold_ids) != prep.n_folds:
        raise PipelineError(f"{out / 'prepare' / 'folds.parquet'} has {len(fold_ids)} folds but prepare.n_folds="
                            f"{prep.n_folds}: re-run 00_prepare (python 00_prepare/run.py) or set prepare.n_folds="
                            f"{len(fold_ids)}")
    data = texts = None
    if t.step != "collect":
        data = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file)
        column = folds[["essay_id"]].merge(data.train, on="essay_id", how="left")["full_text"]
        if column.isna().any():
            raise PipelineError(
                f"{params.input_dir / prep.train_file} lacks essays of folds.parquet: re-run 00_prepare")
        texts = column.tolist()
    for name, spec in t.all_models.items():
        if t.model and name != t.model:
            continue
        backbone, pseudo = spec.backbone or params.backbone, None
        if t.step != "collect" and spec.uses_pseudo:
            pseudo = load_student_pseudo(pseudo_dir(out, name), out / "prepare" / "external.parquet", fold_ids, texts,
                                         folds_fingerprint(folds), spec.teacher)
        if t.step != "collect" and spec.mlm.epochs > 0:
            external = read_external(out / "prepare" / "external.parquet")
            mlm_texts = [*data.train["full_text"], *data.test["full_text"], *external["full_text"]]
            planned = str(mlm_dir(out, mlm_fingerprint(spec, backbone, mlm_texts, params.seed)))
            if folds_to_train(spec, planned, folds, texts, pseudo, out, params.seed, t.folds or fold_ids):
                backbone = adapted_backbone(spec, backbone, mlm_texts, out, params.seed, t.device)
            else:  # every fold is kept: no MLM run (its cache may be gone, e.g. after dvc pull elsewhere)
                backbone = planned
        todo = t.folds or fold_ids
        workers = t.fold_workers
        if workers != 1 and data_parallel():
            log.info("%s: data parallel over %s processes: every process trains each fold together, "
                     "train.fold_workers=%d not used", name, os.environ["WORLD_SIZE"], workers)
            workers = 1
        if t.step != "collect" and workers != 1 and len(todo) > 1:
            pending = folds_to_train(spec, backbone, folds, texts, pseudo, out, params.seed, todo)
            if pending:
                train_in_workers(params, name, pending, Path(__file__))
            if not t.folds:
                prune_folds(out, name, fold_ids)
            if t.step == "all":
                collect_oof(out, name, folds)
            continue
        train_model(spec, backbone, folds, texts or [], out, params.seed, t.folds, t.device, t.step, pseudo)


if __name__ == "__main__":
    exit_with(main, __doc__)
