"""Experiment tracking: the training logger and the headline metrics of each run.

`StepLogger` is the one logging call of a training run: every optimizer step's row (train loss, learning
rate, gradient norm, throughput, and at eval steps the held-out loss and QWK) goes to dvclive, one folder per
trained unit (`layout.live_dir`), and, when `train.tracking` asks, to Weights & Biases or MLflow as well.
`training_curves` gathers a model's units into one file per metric (a `unit` column), which dvc.yaml plots
with one series per fold (`.dvc/plots/by_unit.json`).

`write_headline` writes the few figures of a stage that `dvc exp show` compares between experiments: they
live in git-tracked `paths.metrics` (the full metrics stay in the git-ignored output folder, which an
experiment does not commit), rounded to 4 decimals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from common.core.errors import PipelineError
from common.core.io import atomic_write, write_json

log = logging.getLogger(__name__)

TRACKERS = ("wandb", "mlflow")
CURVE_METRICS = ("train_loss", "eval_loss", "eval_qwk", "lr", "grad_norm", "tokens_per_second", "peak_gpu_mem_mb")
"""The per-step series drawn for every model (one plot each, one line per unit); layer-group statistics stay
in the units' dvclive folders."""
DIGITS = 4


class TrackingError(PipelineError):
    """A tracker was asked for that cannot run here."""


def check_trackers(trackers: Sequence[str]) -> None:
    """Fail before any work when a tracker of train.tracking is unknown or not installed."""
    import importlib.util
    import sys

    for name in trackers:
        if name not in TRACKERS:
            raise TrackingError(f"train.tracking: unknown tracker {name!r}; choose from {list(TRACKERS)}")
        loaded = sys.modules.get(name, ...)
        if loaded is None or (loaded is ... and importlib.util.find_spec(name) is None):
            raise TrackingError(f"train.tracking lists {name}, which is not installed: pip install {name} (or drop "
                                "it from train.tracking; dvclive always logs)")


def inside_dvc_repository() -> bool:
    """Whether the working directory is inside a DVC repository (dvclive, outside one, would `dvc init` the
    enclosing git repository, or fail in one without commits)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        Repo.find_root()
    except NotDvcRepoError:
        return False
    return True


def rounded(value: Any, digits: int = DIGITS) -> Any:
    """`value` with every float rounded to `digits` decimals (dicts and lists walked)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def write_headline(path: Path, values: Mapping[str, Any]) -> None:
    """The stage's headline figures for `dvc exp show`, floats at 4 decimals, written atomically."""
    write_json(path, rounded(dict(values)))


class StepLogger:
    """Per-step metrics of one trained unit to dvclive (and the asked-for trackers).

    Args:
        live_dir: the unit's dvclive folder (emptied: a resumed run replays its rows, see `replay`).
        run_name: the unit's name for trackers with a run list (e.g. "tiny-regression/fold_0").
        config: the unit's settings, logged as the run's parameters by wandb / MLflow.
        trackers: any of TRACKERS beside dvclive (each imported here; missing: TrackingError with the fix).
    """

    def __init__(self, live_dir: Path, run_name: str, config: Mapping[str, Any] | None = None,
                 trackers: Sequence[str] = ()) -> None:
        check_trackers(trackers)
        self.live = None
        if inside_dvc_repository():
            from dvclive import Live

            logging.getLogger("dvclive").setLevel(logging.WARNING)
            self.live = Live(dir=str(live_dir), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
        else:
            log.info("%s: not inside a DVC repository, so no dvclive log (the fold's log.csv is still written); "
                     "run from the repository root", run_name)
        self.run_name = run_name
        self._others = [_open_tracker(name, run_name, dict(config or {})) for name in trackers]

    def log(self, row: Mapping[str, Any]) -> None:
        """One step's row: `step` plus metric values (None or non-numbers skipped)."""
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
        if self.live is not None:
            self.live.step = step
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.make_summary()
        for tracker in self._others:
            tracker.log(values, step)

    def replay(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log the rows of an interrupted run again (its checkpoint holds them), so the resumed run's series is
        exactly the uninterrupted one's."""
        for row in rows:
            self.log(row)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
        for tracker in self._others:
            tracker.close()


class _Wandb:
    def __init__(self, module, run_name: str, config: dict) -> None:
        self.run = module.init(name=run_name, config=config, reinit=True)

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, module, run_name: str, config: dict) -> None:
        self.module = module
        self.module.start_run(run_name=run_name)
        flat = pd.json_normalize(config, sep=".").to_dict(orient="records")[0] if config else {}
        self.module.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, values: dict, step: int) -> None:
        self.module.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.module.end_run()


def _open_tracker(name: str, run_name: str, config: dict):
    import importlib

    module = importlib.import_module(name)  # check_trackers has made sure it is there
    return _Wandb(module, run_name, config) if name == "wandb" else _Mlflow(module, run_name, config)


def unit_series(live_dir: Path) -> dict[str, pd.DataFrame]:
    """A unit's dvclive series: metric name -> frame (step, value column named as the metric)."""
    root = Path(live_dir) / "plots" / "metrics"
    series = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        name = path.relative_to(root).with_suffix("").as_posix()
        frame = pd.read_csv(path, sep="\t")
        value = name.rsplit("/", 1)[-1]
        series[name] = frame[["step", value]].rename(columns={value: name})
    return series


def training_curves(units: Mapping[str, Path], out_dir: Path, metrics: Sequence[str] = CURVE_METRICS) -> list[Path]:
    """One TSV per metric under `out_dir` (step, unit, the metric) from the units' dvclive folders (unit name
    -> folder; absent folders skipped): what dvc.yaml plots with one line per unit. Files of metrics no unit
    logged are removed. Returns the files written."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for unit, folder in units.items():
        for name, frame in unit_series(folder).items():
            if name in metrics:
                frames.setdefault(name, []).append(frame.assign(unit=unit)[["step", "unit", name]])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in metrics:
        path = out_dir / f"{name}.tsv"
        if name not in frames:
            path.unlink(missing_ok=True)
            continue
        table = pd.concat(frames[name], ignore_index=True)
        with atomic_write(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
        written.append(path)
    return written
