"""OOF predictions: a broken oof.parquet is reported as a problem in the OOF predictions, not in the inputs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.core.errors import InputError
from common.scoring.oof import load_oof_predictions, read_folds

N = 12


def write_folds(folder: Path) -> Path:
    folds = pd.DataFrame({
        "essay_id": [f"e{i}" for i in range(N)], "score": [1 + i % 6 for i in range(N)], "fold": [i % 3 for i in range(N)],
        "prompt_cluster": 0, "prompt_name": "Car-free cities", "origin": ["persuade", "other"] * (N // 2),
    })
    path = folder / "folds.parquet"
    folds.to_parquet(path, index=False)
    return path


def write_oof(train_dir: Path, name: str, oof: pd.DataFrame) -> None:
    (train_dir / name).mkdir(parents=True)
    oof.to_parquet(train_dir / name / "oof.parquet", index=False)


def good_oof() -> pd.DataFrame:
    return pd.DataFrame({"essay_id": [f"e{i}" for i in range(N)], "fold": [i % 3 for i in range(N)],
                         "pred": np.linspace(1.0, 6.0, N)})


def test_good_oof_files_load_in_folds_order(tmp_path):
    folds_path = write_folds(tmp_path)
    write_oof(tmp_path / "train", "m1", good_oof().iloc[::-1])
    oofs = load_oof_predictions(tmp_path / "train", folds_path, [])
    assert oofs.names == ["m1"]
    np.testing.assert_allclose(oofs.preds["m1"], np.linspace(1.0, 6.0, N))


def test_broken_oof_file_names_the_oof_predictions_in_the_header(tmp_path):
    folds_path = write_folds(tmp_path)
    broken = good_oof()
    broken.loc[3, "pred"] = np.nan
    write_oof(tmp_path / "train", "m1", broken)
    write_oof(tmp_path / "train", "m2", good_oof().drop(columns="pred"))
    with pytest.raises(InputError) as err:
        load_oof_predictions(tmp_path / "train", folds_path, [])
    msg = str(err.value)
    assert msg.startswith("2 problem(s) in the OOF predictions:\n")
    assert "input files" not in msg
    assert "m1/oof.parquet: 1 NaN or infinite prediction(s) (essay_id ['e3'])" in msg
    assert "m2/oof.parquet: missing column(s) ['pred']" in msg


def test_model_list_and_folds_problems_name_what_is_wrong(tmp_path):
    folds_path = write_folds(tmp_path)
    write_oof(tmp_path / "train", "m1", good_oof())
    with pytest.raises(InputError, match=r"^1 problem\(s\) in the ensemble's model list:\n.*listed twice"):
        load_oof_predictions(tmp_path / "train", folds_path, ["m1", "m1"])
    with pytest.raises(InputError, match=r"^1 problem\(s\) in the OOF predictions:\n.*no oof.parquet for model"):
        load_oof_predictions(tmp_path / "train", folds_path, ["m9"])
    pd.read_parquet(folds_path).drop(columns="origin").to_parquet(folds_path, index=False)
    with pytest.raises(InputError, match=r"^1 problem\(s\) in the folds table:\n.*missing column"):
        read_folds(folds_path)
