"""Competition input files: schemas, validation and loading.

`load_competition_data` reads train, test, sample submission and (optionally) the external
PERSUADE-style corpus, checks every file before any work is done, and raises one `InputError` that
lists every problem found, each naming the file, the rows and the fix.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.core.errors import InputError

SCORES = (1, 2, 3, 4, 5, 6)
TRAIN_COLUMNS = ("essay_id", "full_text", "score")
TEST_COLUMNS = ("essay_id", "full_text")
SUBMISSION_COLUMNS = ("essay_id", "score")
CORPUS_COLUMNS = ("essay_id_comp", "full_text", "holistic_essay_score", "prompt_name")
_MAX_ROWS_SHOWN = 5
_INTEGER = re.compile(r"^\s*[+-]?\d+(\.0*)?\s*$")
_LETTER = re.compile(r"[^\W\d_]")
_PLACEHOLDERS = frozenset({"nan", "-nan", "none", "null", "na", "n/a", "#n/a", "#na", "<na>"})
"""Whole-essay texts (stripped, lower-cased) that a spreadsheet or export writes for a missing value."""


@dataclass
class CompetitionData:
    """Validated inputs. `corpus` uses the pipeline's names: essay_id, full_text, score, prompt_name, ..."""

    train: pd.DataFrame
    test: pd.DataFrame
    sample_submission: pd.DataFrame
    corpus: pd.DataFrame | None


def _rows(frame: pd.DataFrame, mask: pd.Series, id_column: str | None = None) -> str:
    """'rows 3, 7 (essay_id a1, b2)' for the first few rows where mask is true (1-based data rows)."""
    idx = list(mask[mask].index)
    shown = idx[:_MAX_ROWS_SHOWN]
    numbers = ", ".join(str(i + 1) for i in shown)
    text = f"row {numbers}" if len(idx) == 1 else f"rows {numbers}"
    if id_column is not None and id_column in frame.columns:
        ids = ", ".join(repr(str(frame.at[i, id_column])) for i in shown)
        text += f" ({id_column} {ids})"
    if len(idx) > len(shown):
        text += f" and {len(idx) - len(shown)} more"
    return text


def read_csv_checked(path: Path, required: tuple[str, ...], problems: list[str]) -> pd.DataFrame | None:
    """Read a CSV as strings; append problems (missing file, encoding, parse, columns); None if unusable."""
    if not path.exists():
        problems.append(
            f"{path}: file not found. Fix: put the file there, or point paths.input (or the file name "
            "parameter in the prepare section) at it."
        )
        return None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(
            f"{path}: not valid UTF-8 (byte {exc.start}, line {line}: {raw[exc.start:exc.start + 4]!r}). "
            "Fix: re-save the file with UTF-8 encoding."
        )
        return None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problems.append(f"{path}: cannot be parsed as CSV ({exc}). Fix: check quoting of the text column.")
        return None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.append(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(frame.columns)}). Fix: the file needs columns {', '.join(required)}."
        )
        return None
    if frame.empty:
        problems.append(f"{path}: has a header but no rows. Fix: use the full file.")
        return None
    return frame


def _check_ids(path: Path, frame: pd.DataFrame, column: str, problems: list[str]) -> None:
    ids = frame[column].str.strip()
    empty = ids == ""
    if empty.any():
        problems.append(f"{path}: empty {column} at {_rows(frame, empty)}. Fix: give every row an id.")
    dup = ids.duplicated(keep=False) & ~empty
    if dup.any():
        problems.append(
            f"{path}: duplicate {column} at {_rows(frame, dup, column)}. "
            "Fix: ids must be unique; drop or rename the repeated rows."
        )


def _check_texts(path: Path, frame: pd.DataFrame, id_column: str, problems: list[str]) -> None:
    texts = frame["full_text"]
    stripped = texts.str.strip()
    empty = stripped == ""
    if empty.any():
        problems.append(
            f"{path}: empty full_text at {_rows(frame, empty, id_column)}. Fix: remove those rows or restore "
            "their text."
        )
    placeholder = stripped.str.lower().isin(_PLACEHOLDERS)
    if placeholder.any():
        values = ", ".join(repr(v) for v in dict.fromkeys(stripped[placeholder]))
        problems.append(
            f"{path}: full_text is a missing-value placeholder ({values}), not an essay, at "
            f"{_rows(frame, placeholder, id_column)}. Fix: remove those rows or restore their text (the export "
            "wrote a placeholder where the essay was missing)."
        )
    no_letters = ~empty & ~placeholder & ~texts.map(lambda t: bool(_LETTER.search(t)))
    if no_letters.any():
        problems.append(
            f"{path}: full_text holds no words (numbers or symbols only) at "
            f"{_rows(frame, no_letters, id_column)}. Fix: check the column order or the export."
        )


def _check_scores(path: Path, frame: pd.DataFrame, column: str, id_column: str, problems: list[str]) -> None:
    values = frame[column]
    not_int = ~values.map(lambda v: bool(_INTEGER.match(v)))
    if not_int.any():
        problems.append(
            f"{path}: {column} is not an integer at {_rows(frame, not_int, id_column)}. "
            "Fix: scores must be whole numbers 1-6."
        )
    as_num = pd.to_numeric(values.where(~not_int), errors="coerce")
    out_of_range = ~not_int & ~as_num.isin(SCORES)
    if out_of_range.any():
        problems.append(
            f"{path}: {column} outside 1-6 at {_rows(frame, out_of_range, id_column)}. "
            "Fix: scores must be whole numbers 1-6."
        )


def load_competition_data(
    input_dir: str | Path,
    train_file: str = "train.csv",
    test_file: str = "test.csv",
    sample_submission_file: str = "sample_submission.csv",
    external_file: str = "",
) -> CompetitionData:
    """Read and validate every input file; raise InputError listing all problems before any work."""
    input_dir = Path(input_dir)
    problems: list[str] = []
    paths = {
        "train": input_dir / train_file,
        "test": input_dir / test_file,
        "sample_submission": input_dir / sample_submission_file,
    }
    train = read_csv_checked(paths["train"], TRAIN_COLUMNS, problems)
    test = read_csv_checked(paths["test"], TEST_COLUMNS, problems)
    sub = read_csv_checked(paths["sample_submission"], SUBMISSION_COLUMNS, problems)
    corpus = None
    if external_file:
        paths["corpus"] = input_dir / external_file
        corpus = read_csv_checked(paths["corpus"], CORPUS_COLUMNS, problems)

    if train is not None:
        _check_ids(paths["train"], train, "essay_id", problems)
        _check_texts(paths["train"], train, "essay_id", problems)
        _check_scores(paths["train"], train, "score", "essay_id", problems)
    if test is not None:
        _check_ids(paths["test"], test, "essay_id", problems)
        _check_texts(paths["test"], test, "essay_id", problems)
    if sub is not None:
        _check_ids(paths["sample_submission"], sub, "essay_id", problems)
    if test is not None and sub is not None:
        test_ids, sub_ids = set(test["essay_id"].str.strip()), set(sub["essay_id"].str.strip())
        if test_ids != sub_ids:
            only_test = sorted(test_ids - sub_ids)[:_MAX_ROWS_SHOWN]
            only_sub = sorted(sub_ids - test_ids)[:_MAX_ROWS_SHOWN]
            problems.append(
                f"{paths['sample_submission']}: essay ids differ from {paths['test']} "
                f"(only in test: {only_test}; only in sample submission: {only_sub}). "
                "Fix: use the sample submission that belongs to this test file."
            )
    if corpus is not None:
        _check_ids(paths["corpus"], corpus, "essay_id_comp", problems)
        _check_texts(paths["corpus"], corpus, "essay_id_comp", problems)
        _check_scores(paths["corpus"], corpus, "holistic_essay_score", "essay_id_comp", problems)
        empty_prompt = corpus["prompt_name"].str.strip() == ""
        if empty_prompt.any():
            problems.append(
                f"{paths['corpus']}: empty prompt_name at {_rows(corpus, empty_prompt, 'essay_id_comp')}. "
                "Fix: every corpus essay needs its prompt name."
            )
    if problems:
        raise InputError(problems)

    assert train is not None and test is not None and sub is not None  # no problems means all were read
    train = train.assign(essay_id=train["essay_id"].str.strip(), score=pd.to_numeric(train["score"]).astype(int))
    test = test.assign(essay_id=test["essay_id"].str.strip())
    sub = sub.assign(essay_id=sub["essay_id"].str.strip())
    if corpus is not None:
        corpus = corpus.rename(columns={"essay_id_comp": "essay_id", "holistic_essay_score": "score"})
        corpus = corpus.assign(
            essay_id=corpus["essay_id"].str.strip(),
            score=pd.to_numeric(corpus["score"]).astype(int),
            prompt_name=corpus["prompt_name"].str.strip(),
        )
    return CompetitionData(
        train=train[list(TRAIN_COLUMNS)].reset_index(drop=True),
        test=test[list(TEST_COLUMNS)].reset_index(drop=True),
        sample_submission=sub[list(SUBMISSION_COLUMNS)].reset_index(drop=True),
        corpus=None if corpus is None else corpus.reset_index(drop=True),
    )
