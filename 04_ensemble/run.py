"""Stage 04_ensemble: LightGBM stacking, greedy blending and final thresholds on OOF predictions.

Run from the repository root: python 04_ensemble/run.py [dotted.key=value ...]
"""

from common.config import Params
from common.stage import NotBuiltYet, exit_with


def main(params: Params) -> None:
    raise NotBuiltYet("04_ensemble is not built yet (OOF post-processing: issue 7); the stages before it ran fine.")


if __name__ == "__main__":
    exit_with(main, __doc__)
