"""Stage 05_infer: offline-safe inference writing submission.csv.

Run from the repository root: python 05_infer/run.py [dotted.key=value ...]
"""

from common.config import Params
from common.stage import NotBuiltYet, exit_with


def main(params: Params) -> None:
    raise NotBuiltYet("05_infer is not built yet (inference: issue 10); the stages before it ran fine.")


if __name__ == "__main__":
    exit_with(main, __doc__)
