"""Stage 02_train: per-fold transformer training writing out-of-fold predictions.

Run from the repository root: python 02_train/run.py [dotted.key=value ...]
  train.model=NAME    train only that model
  train.folds=[0,2]   train only those folds (e.g. one process per GPU); OOF is collected once all exist
  train.step=fit      train without collecting; train.step=collect: only collect (dvc runs one `train`
                      stage per model and fold, then one `oof` stage per model)
Writes output/train/<model>/fold_<k>/ (model, tokenizer, config, oof, log), and when every fold is
there output/train/<model>/oof.parquet and metrics.json. Killed runs resume from output/checkpoints/.
Data parallel on several GPUs: accelerate launch --num_processes 2 02_train/run.py [...]
"""

import logging
from pathlib import Path

import torch

from common.config import Params
from common.data import load_competition_data
from common.oof import read_folds
from common.pseudo import load_student_pseudo
from common.stage import exit_with
from common.train_stage import train_model

log = logging.getLogger("aes.train")


def main(params: Params) -> None:
    out, t = params.output_dir, params.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    folds = read_folds(out / "prepare" / "folds.parquet")
    texts: list[str] = []
    if t.step != "collect":
        prep = params.prepare
        train = load_competition_data(params.input_dir, prep.train_file, prep.test_file,
                                      prep.sample_submission_file).train
        column = folds[["essay_id"]].merge(train, on="essay_id", how="left")["full_text"]
        if column.isna().any():
            raise FileNotFoundError(
                f"{params.input_dir / prep.train_file} lacks essays of folds.parquet: re-run 00_prepare")
        texts = column.tolist()
    pseudo = None
    for spec in t.models:
        if t.model and spec.name != t.model:
            continue
        if spec.pseudo_labels != "none" and pseudo is None and t.step != "collect":
            pseudo = load_student_pseudo(out / "pseudo", out / "prepare" / "external.parquet",
                                         sorted(folds["fold"].unique().tolist()), texts)
        backbone = spec.backbone or params.backbone
        if backbone == "mlm":  # the domain-adapted backbone of the mlm stage
            backbone = str(out / "mlm" / "backbone")
            if not Path(backbone, "config.json").is_file():
                raise FileNotFoundError(f"{backbone} not found: run the mlm stage (python 01_pseudo_label/mlm.py) "
                                        f"before training {spec.name}")
        train_model(spec, backbone, folds, texts, out, params.seed, t.folds, t.device, t.step,
                    pseudo if spec.pseudo_labels != "none" else None)

if __name__ == "__main__":
    exit_with(main, __doc__)
