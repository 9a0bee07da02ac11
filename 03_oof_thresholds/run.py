"""Stage 03_oof_thresholds: per-model QWK thresholds fitted on OOF predictions, with honest (nested) scores.

Run from the repository root: python 03_oof_thresholds/run.py [dotted.key=value ...]
Reads output/prepare/folds.parquet and output/train/<model>/oof.parquet; writes output/thresholds/
(<model>.json, plots/) and output/metrics/thresholds.json.
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
    from common.scoring.thresholds_stage import fit_thresholds

    fit_thresholds(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
