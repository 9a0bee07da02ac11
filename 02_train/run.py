"""Stage 02_train: per-fold transformer training writing out-of-fold predictions.

Run from the repository root: python 02_train/run.py [dotted.key=value ...]
"""

from common.config import Params
from common.stage import NotBuiltYet, exit_with


def main(params: Params) -> None:
    raise NotBuiltYet("02_train is not built yet (the training engine: issue 9); the stages before it ran fine.")


if __name__ == "__main__":
    exit_with(main, __doc__)
