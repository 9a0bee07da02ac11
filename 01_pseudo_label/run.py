"""Stage 01_pseudo_label: MLM domain adaptation and leak-free soft pseudo-labels on the external corpus.

Run from the repository root: python 01_pseudo_label/run.py [dotted.key=value ...]
"""

from common.config import Params
from common.stage import NotBuiltYet, exit_with


def main(params: Params) -> None:
    raise NotBuiltYet("01_pseudo_label is not built yet (MLM adaptation and pseudo-labels: issue 4); the stages before it ran fine.")


if __name__ == "__main__":
    exit_with(main, __doc__)
