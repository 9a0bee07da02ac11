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

import sys
from pathlib import Path

try:
    from common.config.params import Params
    from common.config.stage import exit_with
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)


def main(params: Params) -> None:
    from common.train.train_stage import train_models

    train_models(params, Path(__file__))


if __name__ == "__main__":
    exit_with(main, __doc__)
