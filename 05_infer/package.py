"""Build the Kaggle upload folder from the trained artifacts: python 05_infer/package.py [key=value ...]

Writes output/kaggle/ (see common/tools/kaggle.py): dataset/ (fold models, ensemble, the `common` library,
wheels), notebook/ (the notebook generated from 05_infer/run.py and its kernel-metadata.json) and
UPLOAD.md with the `kaggle` CLI commands. Set infer.kaggle_user=<you>; `--no-wheels` skips downloading
library wheels (then the Kaggle image must already meet dataset/requirements.json).
"""

import sys

try:
    from common.config.params import Params
    from common.config.stage import run_stage
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)

WHEELS = "--no-wheels" not in sys.argv


def main(params: Params) -> None:
    from common.tools.kaggle import build_bundle

    build_bundle(params, params.output_dir / "kaggle", wheels=WHEELS)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__, [a for a in sys.argv[1:] if a != "--no-wheels"]))
