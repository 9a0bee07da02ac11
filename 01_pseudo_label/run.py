"""Stage 01_pseudo_label: leak-free soft pseudo-labels on the external corpus, one student at a time.

Run from the repository root: python 01_pseudo_label/run.py [train.model=STUDENT] [dotted.key=value ...]
For each student of train.students (or only train.model), fold k of its `teacher` (trained by 02_train
without fold k) predicts every external essay (output/prepare/external.parquet: corpus essays that match no
train essay); the predictions become soft labels (class probabilities, or a normal spread of a regression
prediction). Writes output/pseudo/<student>/fold_<k>.parquet (essay_id, prob_1..prob_6, expected,
teacher, teacher_fold), report.csv (pseudo-label vs train score distribution per prompt), metrics.json
and plots/. Only the student's fold k reads fold_<k>.parquet. A student with mlm.epochs > 0 adapts its
backbone in 02_train (python 01_pseudo_label/mlm.py does it ahead of time).
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
    from common.pseudo.pseudo_stage import label_students

    label_students(params)


if __name__ == "__main__":
    exit_with(main, __doc__)
