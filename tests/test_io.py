"""Crash-safe writes: atomic files and staged output folders."""

import signal
import subprocess
import sys
from pathlib import Path

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


def test_staged_dir_clears_what_a_killed_process_left(tmp_path):
    final = tmp_path / "fold_0"
    script = ("import os, signal, sys\nfrom common.io import staged_dir\n"
              f"with staged_dir({str(final)!r}) as tmp:\n"
              "    (tmp / 'half.bin').write_bytes(b'x')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".fold_0.tmp-")]
    assert len(left) == 1 and (left[0] / "half.bin").exists() and not final.exists()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [tmp_path / f".fold_0.tmp-{alive.pid}-busy", tmp_path / ".fold_1.tmp-1-other", tmp_path / ".fold_0.tmp-x"]
        for folder in kept:
            folder.mkdir()
        with staged_dir(final) as tmp:
            (tmp / "done.txt").write_text("ok")
        assert not left[0].exists()  # the dead process's folder is gone ...
        assert all(folder.exists() for folder in kept)  # ... a live one's, another target's and foreign names stay
        assert (final / "done.txt").read_text() == "ok"
    finally:
        alive.kill()
        alive.wait()
