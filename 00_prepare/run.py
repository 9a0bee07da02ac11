"""Stage 00_prepare: validate inputs, match essays to the external corpus, recover prompts, make folds.

Run from the repository root: python 00_prepare/run.py [dotted.key=value ...]
Writes output/prepare/: folds.parquet, external.parquet, test_prompts.parquet, metrics.json, plots/.
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
    from common.prepare.prepare_stage import prepare_inputs

    prepare_inputs(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
