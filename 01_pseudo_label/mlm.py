"""Masked-language-model domain adaptation of a model's backbone, ahead of 02_train (optional).

Run from the repository root: python 01_pseudo_label/mlm.py [train.model=NAME] [dotted.key=value ...]
For each model with mlm.epochs > 0 (or only train.model), continues the MLM pretraining of its backbone
on the train, test and external essays (no labels used) into output/mlm/<fingerprint>/backbone/ (encoder,
tokenizer, mlm_metrics.json with the held-out MLM loss before and after). 02_train does the same step
itself and finds the result here; models with the same backbone and MLM settings share one run.
"""

import sys

try:
    from common.config.params import Params
    from common.config.stage import exit_with
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)


def main(params: Params) -> None:
    from common.train.mlm_stage import adapt_backbones

    adapt_backbones(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
