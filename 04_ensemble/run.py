"""Stage 04_ensemble: mean / greedy / scipy / per-prompt blends and a LightGBM stacker, scored nested; one is kept.

Run from the repository root: python 04_ensemble/run.py [dotted.key=value ...]
Reads output/prepare/folds.parquet, output/train/<model>/oof.parquet and the train essays; writes
output/ensemble/: artifacts/ (ensemble.json, stacker/, text_vocabulary.json, prompt_assigner.npz: all 05_infer
needs),
metrics.json (with the bootstrap intervals and the selected method's nested QWK per prompt and origin),
oof.parquet (its nested held-out scores, essay_id / fold / score), frontier.csv (nested QWK on all and on other-origin rows of every
method at every target weight), intervals.csv and plots/.
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
    from common.ensemble.ensemble_stage import ensemble_models

    ensemble_models(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
