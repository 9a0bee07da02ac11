"""Fast checks of benchmarks/asap_real.py's data handling (no training): the split, the inputs it writes,
the ten-count baseline features, and the clean skip when the ASAP file is absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "asap_real.py"


@pytest.fixture(scope="module")
def asap_real():
    spec = importlib.util.spec_from_file_location("asap_real", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def essays() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 240
    prompts = np.repeat(np.arange(1, 7), n // 6)
    scores = rng.integers(1, 7, n)
    texts = [f"Essay {i} about topic {p}. It has @PERSON1 and words, commas." for i, p in enumerate(prompts)]
    return pd.DataFrame({"essay_id": np.arange(n), "prompt_id": prompts, "full_text": texts,
                         "raw_score": scores, "score": scores})


def test_split_keeps_prompts_and_disjoint_ids(asap_real, essays):
    train, test = asap_real.split_essays(essays, n_train=120, n_test=30, seed=0)
    assert len(train) == 120 and len(test) == 30
    assert not set(train["essay_id"]) & set(test["essay_id"])
    assert set(train["prompt_id"]) == set(range(1, 7))
    assert train["essay_id"].str.startswith("asap_").all()


def test_inputs_follow_competition_schema(asap_real, essays, tmp_path):
    train, test = asap_real.split_essays(essays, n_train=0, n_test=0, seed=0)
    asap_real.write_competition_inputs(train, test, tmp_path)
    assert list(pd.read_csv(tmp_path / "train.csv").columns) == ["essay_id", "full_text", "score"]
    assert list(pd.read_csv(tmp_path / "test.csv").columns) == ["essay_id", "full_text"]
    sub = pd.read_csv(tmp_path / "sample_submission.csv")
    assert list(sub.columns) == ["essay_id", "score"] and len(sub) == len(test)


def test_ten_counts(asap_real):
    frame = asap_real.ten_counts(["One two, three. Elephants @CAPS1 run!"], np.array([3]))
    assert frame.shape == (1, 10)
    row = frame.iloc[0]
    assert row["words"] == 6 and row["sentences"] == 2 and row["commas"] == 1
    assert row["long_words"] == 1 and row["at_tokens"] == 1 and row["prompt_id"] == 3


def test_skips_without_data(asap_real, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["asap_real.py", "--data", str(tmp_path / "absent.csv.gz")])
    assert asap_real.main() == 0
    assert "skipping" in capsys.readouterr().out


def test_skips_without_the_backbone_package(asap_real, tmp_path, monkeypatch, capsys):
    data = tmp_path / "asap.csv.gz"
    pd.DataFrame({"essay_id": [1], "prompt_id": [1], "full_text": ["text"], "raw_score": [3], "score": [3]}).to_csv(
        data, index=False)
    monkeypatch.setattr(asap_real, "find_backbone", lambda: None)
    monkeypatch.setattr(sys, "argv", ["asap_real.py", "--data", str(data), "--out", str(tmp_path / "out")])
    assert asap_real.main() == 0
    assert "make asap" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_the_host_line_names_the_cpu_and_the_stolen_share(asap_real, tmp_path):
    """Timings of make asap on other hosts differ by CPU and by what the hypervisor takes: the line says both."""
    stat, cpuinfo = tmp_path / "stat", tmp_path / "cpuinfo"
    stat.write_text("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 50 0 25 400 0 0 0 25 0 0\n")
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\n")
    start = asap_real.cpu_times(stat)
    assert start == (1000, 50)
    line = asap_real.host_line(start, (2000, 150), cpuinfo)
    assert "Some CPU 9000" in line and "steal 10.0% of CPU time" in line and "load average" in line
    assert "steal n/a" in asap_real.host_line(None, None, tmp_path / "missing")
    assert asap_real.cpu_times(tmp_path / "missing") is None


def test_the_whole_held_out_slice_is_scored_by_default(asap_real):
    """600 of the 1,603 held-out essays scored 0.8187 where the other 1,003 scored 0.8369 with the same models:
    the submission is scored on the whole slice unless asked otherwise."""
    assert asap_real.parse_args([]).test_essays == 0
    assert asap_real.parse_args(["--test-essays", "600"]).test_essays == 600


def test_the_held_out_line_carries_a_bootstrap_interval(asap_real):
    rng = np.random.default_rng(0)
    y = rng.integers(1, 7, 4000)
    noisy = np.clip(y + rng.integers(-1, 2, y.size), 1, 6)
    prompts = np.repeat(np.arange(1, 5), 1000)
    small = asap_real.held_out_summary(y[:300], noisy[:300], prompts[:300], seed=0)
    large = asap_real.held_out_summary(y, noisy, prompts, seed=0)
    for figures in (small, large):
        assert figures["low"] < figures["all"] < figures["high"]
    assert large["all"] == pytest.approx(asap_real.qwk(y, noisy))
    assert set(large) >= {"1", "2", "3", "4", "all", "low", "high"}
    assert (large["high"] - large["low"]) < 0.6 * (small["high"] - small["low"])  # ~1/sqrt(13) as wide
    perfect = asap_real.held_out_summary(y, y, prompts, seed=0)
    assert perfect["low"] == perfect["high"] == 1.0


def test_per_prompt_gaps_are_paired_and_say_when_noise_covers_them(asap_real):
    rng = np.random.default_rng(1)
    n = 1200
    y = rng.integers(1, 7, n)
    prompts = np.repeat(np.arange(1, 4), n // 3)
    folds = np.tile(np.arange(4), n // 4)
    ensemble = np.clip(y + rng.integers(-1, 2, n), 1, 6)
    worse_on_1 = ensemble.copy()
    on_1 = prompts == 1
    worse_on_1[on_1] = rng.integers(1, 7, on_1.sum())  # random scores on prompt 1 only
    gaps = asap_real.per_prompt_gaps(y, ensemble, {"same": ensemble, "worse on 1": worse_on_1}, prompts, folds,
                                     seed=0)
    assert gaps["same"]["all"] == (0.0, 0.0, 0.0)
    diff, low, high = gaps["worse on 1"]["1"]
    expected = asap_real.qwk(y[on_1], ensemble[on_1]) - asap_real.qwk(y[on_1], worse_on_1[on_1])
    assert diff == pytest.approx(expected) and 0 < low < diff < high
    assert gaps["worse on 1"]["2"] == (0.0, 0.0, 0.0)  # same scores on prompt 2: no gap, no spread
    assert set(gaps["worse on 1"]) == {"1", "2", "3", "all"}
