"""Crash-safe writes: atomic files and staged output folders."""

import pandas as pd
import pytest

from common.io import atomic_write, staged_dir, write_json, write_parquet


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing_file(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_staged_dir_keeps_previous_output_when_the_stage_crashes(tmp_path):
    out = tmp_path / "prepare"
    with staged_dir(out) as tmp:
        write_parquet(tmp / "folds.parquet", pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError), staged_dir(out) as tmp:
        write_parquet(tmp / "folds.parquet", pd.DataFrame({"x": [2]}))
        raise ValueError("crash after the first file")
    assert pd.read_parquet(out / "folds.parquet")["x"].tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare"]


def test_staged_dir_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "stage"
    with staged_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with staged_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
