"""Input validation: one test per kind of bad input, each message naming the file, the rows and the fix."""

from pathlib import Path

import pandas as pd
import pytest

from common.core.errors import InputError
from common.prepare.data import load_competition_data

CORPUS = "corpus.csv"


def _essay(i: int) -> str:
    return f"Essay number {i} argues that cars should be limited.\n\nIt gives reason {i}."


def write_inputs(folder: Path, n: int = 6) -> dict[str, pd.DataFrame]:
    frames = {
        "train.csv": pd.DataFrame(
            {"essay_id": [f"t{i}" for i in range(n)], "full_text": [_essay(i) for i in range(n)],
             "score": [1 + i % 6 for i in range(n)]}
        ),
        "test.csv": pd.DataFrame({"essay_id": ["x1", "x2"], "full_text": [_essay(100), _essay(101)]}),
        "sample_submission.csv": pd.DataFrame({"essay_id": ["x1", "x2"], "score": [3, 3]}),
        CORPUS: pd.DataFrame(
            {"essay_id_comp": ["C1", "C2"], "full_text": [_essay(0), _essay(200)],
             "holistic_essay_score": [1, 4], "prompt_name": ["Car-free cities", "Car-free cities"],
             "task": ["Independent", "Independent"]}
        ),
    }
    save(folder, frames)
    return frames


def save(folder: Path, frames: dict[str, pd.DataFrame]) -> None:
    for name, frame in frames.items():
        frame.to_csv(folder / name, index=False)


def load(folder: Path):
    return load_competition_data(folder, external_file=CORPUS)


def problem(folder: Path) -> str:
    with pytest.raises(InputError) as err:
        load(folder)
    return str(err.value)


def test_valid_inputs_load_with_pipeline_column_names(tmp_path):
    write_inputs(tmp_path)
    data = load(tmp_path)
    assert list(data.train.columns) == ["essay_id", "full_text", "score"]
    assert data.train["score"].dtype.kind == "i"
    assert {"essay_id", "full_text", "score", "prompt_name", "task"} <= set(data.corpus.columns)
    assert data.train.loc[0, "full_text"].count("\n") == 2  # text is kept exactly, newlines included


def test_external_corpus_is_optional(tmp_path):
    write_inputs(tmp_path)
    assert load_competition_data(tmp_path, external_file="").corpus is None


def test_missing_file(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "test.csv").unlink()
    msg = problem(tmp_path)
    assert "test.csv: file not found" in msg and "Fix" in msg and "paths.input" in msg


def test_missing_column(tmp_path):
    frames = write_inputs(tmp_path)
    save(tmp_path, {"train.csv": frames["train.csv"].drop(columns="score")})
    msg = problem(tmp_path)
    assert "train.csv: missing column(s) 'score'" in msg and "Fix" in msg


def test_empty_text(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[3, "full_text"] = "   "
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "train.csv: empty full_text at row 4 (essay_id 't3')" in msg and "Fix" in msg


@pytest.mark.parametrize("placeholder", ["NaN", "nan", " None ", "null", "NA", "N/A"])
def test_placeholder_text_is_reported_like_an_empty_essay(tmp_path, placeholder):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[2, "full_text"] = placeholder
    frames["test.csv"].loc[0, "full_text"] = placeholder
    save(tmp_path, frames)
    with pytest.raises(InputError) as err:
        load(tmp_path)
    msg = str(err.value)
    assert len(err.value.problems) == 2
    assert f"train.csv: full_text is a missing-value placeholder ({placeholder.strip()!r}), not an essay, at row 3 " \
        "(essay_id 't2')" in msg
    assert "test.csv: full_text is a missing-value placeholder" in msg and "row 1 (essay_id 'x1')" in msg
    assert "Fix: remove those rows or restore their text" in msg


def test_a_placeholder_word_inside_an_essay_is_fine(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[2, "full_text"] = "NA\n\nNone of the cars should be banned."
    save(tmp_path, frames)
    assert load(tmp_path).train.loc[2, "full_text"].startswith("NA")


def test_non_text_essay(tmp_path):
    frames = write_inputs(tmp_path)
    frames["test.csv"].loc[1, "full_text"] = "12345"
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "test.csv: full_text holds no words" in msg and "row 2 (essay_id 'x2')" in msg


def test_score_out_of_range(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[[1, 4], "score"] = [0, 7]
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "train.csv: score outside 1-6 at rows 2, 5 (essay_id 't1', 't4')" in msg and "Fix" in msg


def test_score_not_an_integer(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"]["score"] = frames["train.csv"]["score"].astype(object)
    frames["train.csv"].loc[2, "score"] = "3.5"
    frames["train.csv"].loc[5, "score"] = "high"
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "train.csv: score is not an integer at rows 3, 6" in msg
    assert "outside 1-6" not in msg  # a non-integer is reported once, as a non-integer


def test_integer_valued_float_scores_are_accepted(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"]["score"] = frames["train.csv"]["score"].astype(float)  # written as "1.0"
    save(tmp_path, frames)
    assert load(tmp_path).train["score"].tolist() == [1, 2, 3, 4, 5, 6]


def test_duplicate_ids(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[4, "essay_id"] = "t1"
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "train.csv: duplicate essay_id at rows 2, 5 (essay_id 't1', 't1')" in msg and "Fix" in msg


def test_unreadable_encoding(tmp_path):
    write_inputs(tmp_path)
    raw = (tmp_path / "train.csv").read_bytes()
    (tmp_path / "train.csv").write_bytes(raw.replace(b"argues", "argu\u00e9s".encode("latin-1"), 1))
    msg = problem(tmp_path)
    assert "train.csv: not valid UTF-8" in msg and "line 2" in msg and "re-save the file with UTF-8" in msg


def test_utf8_with_byte_order_mark_is_fine(tmp_path):
    write_inputs(tmp_path)
    raw = (tmp_path / "train.csv").read_bytes()
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + raw)
    assert list(load(tmp_path).train.columns) == ["essay_id", "full_text", "score"]


def test_header_only_file(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "test.csv").write_text("essay_id,full_text\n")
    assert "test.csv: has a header but no rows" in problem(tmp_path)


def test_sample_submission_ids_must_match_test(tmp_path):
    frames = write_inputs(tmp_path)
    frames["sample_submission.csv"].loc[1, "essay_id"] = "zz"
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "sample_submission.csv: essay ids differ" in msg and "'x2'" in msg and "'zz'" in msg


def test_corpus_problems_use_its_own_column_names(tmp_path):
    frames = write_inputs(tmp_path)
    frames[CORPUS].loc[1, "holistic_essay_score"] = 9
    frames[CORPUS].loc[0, "prompt_name"] = ""
    save(tmp_path, frames)
    msg = problem(tmp_path)
    assert "corpus.csv: holistic_essay_score outside 1-6 at row 2 (essay_id_comp 'C2')" in msg
    assert "corpus.csv: empty prompt_name at row 1" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    frames = write_inputs(tmp_path)
    frames["train.csv"].loc[0, "score"] = 9
    frames["test.csv"].loc[0, "full_text"] = ""
    save(tmp_path, frames)
    (tmp_path / "sample_submission.csv").unlink()
    with pytest.raises(InputError) as err:
        load(tmp_path)
    assert len(err.value.problems) == 3
