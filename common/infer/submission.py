"""Where inference reads and writes, the test essays in, and the submission (with 05's local outputs) out.

`resolve_paths` picks Kaggle's folders or local ones; `read_test` checks the test essays against the sample
submission; `make_submission` puts the scores in the sample's order and validates them (every id once, integer
scores 1-6), so a wrong file is never written; `write_outputs` writes the submission and, locally, infer/
together or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.config.params import Params
from common.core.errors import InputError, PipelineError
from common.core.io import atomic_write, staged_dir, write_csv, write_json, write_parquet
from common.prepare.data import read_csv_checked

log = logging.getLogger(__name__)


@dataclass
class InferPaths:
    test: Path
    sample_submission: Path
    artifacts: Path
    submission: Path
    on_kaggle: bool


def resolve_paths(params: Params) -> InferPaths:
    """Where inference reads and writes: Kaggle's folders when <kaggle_root>/input exists, else local ones.

    `infer.artifacts` overrides the artifacts root in both cases.
    """
    p, prep = params.infer, params.prepare
    kaggle_input = Path(p.kaggle_root) / "input"
    if kaggle_input.is_dir():
        competition = kaggle_input / p.competition_dataset
        return InferPaths(
            test=competition / prep.test_file,
            sample_submission=competition / prep.sample_submission_file,
            artifacts=Path(p.artifacts) if p.artifacts else kaggle_input / p.artifacts_dataset,
            submission=Path(p.kaggle_root) / "working" / "submission.csv",
            on_kaggle=True,
        )
    return InferPaths(
        test=params.input_dir / prep.test_file,
        sample_submission=params.input_dir / prep.sample_submission_file,
        artifacts=Path(p.artifacts) if p.artifacts else params.output_dir,
        submission=params.output_dir / "submission.csv",
        on_kaggle=False,
    )


# ---------------------------------------------------------------------------------------------------
# Test essays and the submission


def read_test(test_path: Path, sample_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test essays (essay_id, full_text) and the sample submission, checked but lenient where it can be.

    Missing files or columns and duplicate ids are errors. Empty or odd essays are predicted anyway
    (with a warning): a score for every id beats no submission. Ids must be the same in both files.
    """
    problems: list[str] = []
    test = read_csv_checked(test_path, ("essay_id", "full_text"), problems)
    sample = read_csv_checked(sample_path, ("essay_id", "score"), problems)
    if problems:
        raise InputError(problems)
    assert test is not None and sample is not None
    test = test.assign(essay_id=test["essay_id"].str.strip(), full_text=test["full_text"].fillna(""))
    sample = sample.assign(essay_id=sample["essay_id"].str.strip())
    for path, frame in ((test_path, test), (sample_path, sample)):
        twice = frame["essay_id"][frame["essay_id"].duplicated()].unique().tolist()
        if twice:
            problems.append(f"{path}: duplicate essay_id {twice[:10]}. Fix: every essay needs its own id.")
    only_test = sorted(set(test["essay_id"]) - set(sample["essay_id"]))
    only_sample = sorted(set(sample["essay_id"]) - set(test["essay_id"]))
    if only_sample:
        problems.append(f"{sample_path}: essay ids {only_sample[:10]} have no essay in {test_path}. Fix: use the "
                        "sample submission that belongs to this test file.")
    if only_test:
        problems.append(f"{test_path}: essay ids {only_test[:10]} are missing from {sample_path}. Fix: use the "
                        "sample submission that belongs to this test file.")
    if problems:
        raise InputError(problems)
    empty = test["full_text"].str.strip() == ""
    if empty.any():
        log.warning("%s: %d empty essay(s) (%s): predicted from special tokens alone", test_path, int(empty.sum()),
                    test.loc[empty, "essay_id"].tolist()[:10])
    return test[["essay_id", "full_text"]].reset_index(drop=True), sample[["essay_id"]].reset_index(drop=True)


def make_submission(sample: pd.DataFrame, test_ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """`essay_id, score` in sample-submission order, validated: every id once, integer scores in 1-6."""
    by_id = pd.Series(np.asarray(scores), index=pd.Index(test_ids, name="essay_id"))
    submission = pd.DataFrame({"essay_id": sample["essay_id"], "score": by_id.reindex(sample["essay_id"]).to_numpy()})
    validate_submission(submission, sample)
    submission["score"] = submission["score"].astype(int)
    return submission


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Raise unless the submission is exactly the sample's ids, in order, with integer scores 1..6."""
    problems = []
    if list(submission.columns) != ["essay_id", "score"]:
        problems.append(f"columns are {list(submission.columns)}, not ['essay_id', 'score']")
    elif submission["essay_id"].tolist() != sample["essay_id"].tolist():
        problems.append("essay ids differ from the sample submission's (set or order)")
    else:
        score = pd.to_numeric(submission["score"], errors="coerce")
        bad = score.isna() | ~score.isin([1, 2, 3, 4, 5, 6])
        if bad.any():
            problems.append(f"{int(bad.sum())} score(s) missing or outside the integers 1-6, e.g. for "
                            f"{submission.loc[bad, 'essay_id'].tolist()[:5]}")
    if problems:
        raise PipelineError("submission not written: " + "; ".join(problems))


def write_outputs(submission_path: Path, submission: pd.DataFrame, infer_dir: Path | None = None,
                  metrics: dict | None = None, predictions: pd.DataFrame | None = None) -> None:
    """The submission and, locally (`infer_dir`), infer/metrics.json and infer/test_predictions.parquet, together:
    every file is written in full (staged) before any replaces its predecessor, so a failure (a full disk) leaves
    the previous outputs as they were, never a new submission beside old predictions. Kaggle writes the
    submission alone."""
    if infer_dir is None:
        write_csv(submission_path, submission)
        return
    with atomic_write(submission_path) as staged_submission:
        submission.to_csv(staged_submission, index=False)
        with staged_dir(infer_dir) as tmp:
            write_json(tmp / "metrics.json", metrics)
            write_parquet(tmp / "test_predictions.parquet", predictions)
        # infer/ is in place; leaving atomic_write renames the submission beside it
