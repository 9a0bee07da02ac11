"""Stage 05_infer: offline-safe inference writing submission.csv.

Run from the repository root: python 05_infer/run.py [dotted.key=value ...]
Locally it reads paths.input/test.csv and the artifacts under paths.output (train/<model>/folds/fold_<k>/,
ensemble/artifacts/) and writes output/submission.csv. On Kaggle (<infer.kaggle_root>/input exists) it
reads the competition folder and the artifacts dataset and writes /kaggle/working/submission.csv.
Nothing is fetched from the network: the hub-offline variables are set before transformers loads.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` beside this folder (a Kaggle copy)

from common.core.offline import force_offline

force_offline()

try:
    from common.config.params import Params
    from common.config.stage import exit_with
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)


def main(params: Params) -> None:
    from common.infer.infer_stage import infer_submission

    infer_submission(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
