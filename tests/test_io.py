"""Crash-safe writes: atomic files and staged output folders."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.core import io
from common.core.io import atomic_write, remove_stale_staging, staged_dir, write_json, write_parquet


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
    script = ("import os, signal, sys\nfrom common.core.io import staged_dir\n"
              f"with staged_dir({str(final)!r}) as tmp:\n"
              "    (tmp / 'half.bin').write_bytes(b'x')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".fold_0.tmp-")]
    assert len(left) == 1 and (left[0] / "half.bin").exists() and not final.exists()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [tmp_path / f".fold_0.tmp-{io._HOST}-{alive.pid}-busy",  # a live process's
                tmp_path / f".fold_1.tmp-{io._HOST}-1-other",  # another target's
                tmp_path / f".fold_0.tmp-0badc0de-{left[0].name.split('-')[2]}-x",  # another host's
                tmp_path / ".fold_0.tmp-x"]  # not a staging name
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


def test_a_killed_swap_gets_the_previous_output_back(tmp_path):
    """Killed between moving the previous output aside and renaming the new one in: the next run puts the
    previous output back first, so it survives even if that run fails too."""
    final = tmp_path / "ensemble"
    dead = tmp_path / f".ensemble.old-{io._HOST}-4194305-abc"  # above Linux's largest pid: never alive
    dead.mkdir()
    (dead / "ensemble.json").write_text("previous")
    with pytest.raises(RuntimeError), staged_dir(final):
        raise RuntimeError("this run fails too")
    assert (final / "ensemble.json").read_text() == "previous" and not dead.exists()


def test_folders_of_a_reused_process_id_are_stale(tmp_path):
    final = tmp_path / "fold_0"
    mine_not_made_here = tmp_path / f".fold_0.tmp-{io._HOST}-{os.getpid()}-old"
    mine_not_made_here.mkdir()
    assert remove_stale_staging(final) == [mine_not_made_here] and not mine_not_made_here.exists()
    with staged_dir(final) as tmp:  # the folder in use is never stale, even for a nested call
        assert remove_stale_staging(final) == [] and tmp.exists()
        (tmp / "a.txt").write_text("a")
    with staged_dir(final) as tmp:  # replacing an existing output leaves no sibling behind
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_0"] and (final / "b.txt").exists()


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_written_files_and_stage_folders_get_ordinary_modes(tmp_path, umask_022):
    """Not the 0600 / 0700 of the temporary file and folder they were made as."""
    target = tmp_path / "a.json"
    write_json(target, {"a": 1})
    assert target.stat().st_mode & 0o777 == 0o644
    out = tmp_path / "stage"
    with staged_dir(out) as tmp:
        write_parquet(tmp / "folds.parquet", pd.DataFrame({"x": [1]}))
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "folds.parquet").stat().st_mode & 0o777 == 0o644
    with staged_dir(out) as tmp:  # replacing an existing output
        write_json(tmp / "b.json", {})
    assert out.stat().st_mode & 0o777 == 0o755


def test_file_modes_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {})
        with staged_dir(tmp_path / "stage"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "stage").stat().st_mode & 0o777 == 0o750


def test_a_write_the_disk_refuses_names_the_file_and_the_fix_and_keeps_the_old_one(tmp_path):
    import errno

    from lightgbm.basic import LightGBMError

    from common.core.io import WriteFailed

    target = tmp_path / "model.txt"
    target.write_text("the previous file")
    refusals = (OSError(errno.ENOSPC, "No space left on device"), RuntimeError("basic_ios::clear: iostream error"),
                RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file"),
                LightGBMError("Booster could not save"))
    for refusal in refusals:
        with pytest.raises(WriteFailed) as info, atomic_write(target) as tmp:
            tmp.write_text("half")
            raise refusal
        message = str(info.value)
        assert message.startswith(f"{target}: could not be written ({type(refusal).__name__}: ")
        assert "MiB free there now" in message and "Fix: free space on that disk" in message
        assert target.read_text() == "the previous file" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(TypeError), atomic_write(target):  # a bug stays a bug
        raise TypeError("not JSON serialisable")


def test_a_stage_on_a_full_disk_exits_2_naming_the_file(tmp_path, capsys):
    import errno

    from common.config.stage import run_stage

    def full_disk(params):
        raise OSError(errno.ENOSPC, "No space left on device", str(params.output_dir / "train" / "oof.parquet"))

    def bug(params):
        raise RuntimeError("an ordinary bug")

    args = [f"paths.output={tmp_path}", f"paths.metrics={tmp_path / 'metrics'}"]
    assert run_stage(full_disk, "", args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train' / 'oof.parquet'}: could not be written (OSError: [Errno 28] No space left on " \
           "device" in err and "MiB free there now" in err and "set paths.output to a disk with room" in err
    with pytest.raises(RuntimeError, match="an ordinary bug"):
        run_stage(bug, "", args)
