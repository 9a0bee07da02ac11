"""Stage 03_oof_thresholds: OOF QWK threshold search and per-model reports.

Run from the repository root: python 03_oof_thresholds/run.py [dotted.key=value ...]
"""

from common.config import Params
from common.stage import NotBuiltYet, exit_with


def main(params: Params) -> None:
    raise NotBuiltYet("03_oof_thresholds is not built yet (OOF post-processing: issue 7); the stages before it ran fine.")


if __name__ == "__main__":
    exit_with(main, __doc__)
