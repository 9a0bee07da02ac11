"""Where each artifact lives under paths.output: the one place that spells the folder layout.

    train/<model>/folds/fold_<k>/   one fold's model, tokenizer, config, held-out predictions, log
    train/<model>/folds/fold_<k>_seed<s>/   the same per seed, for a model that lists `seeds` (its first: fold_<k>)
    train/<model>/folds/full[_seed<s>]/     the full fit: every labelled row (`full_fit`)
    train/<model>/oof.parquet       the model's out-of-fold predictions (+ metrics.json, log.csv)
    pseudo/<student>/fold_<k>.parquet   soft labels for a student's fold k (from its teacher's fold k)
    plots/pseudo/<student>/         their score shares against train (dvc plots)
    mlm/<fingerprint>/backbone/     a backbone adapted by masked-language modelling (shared by models)
    checkpoints/<model>/<unit>/     resumable checkpoints while a fold (or full fit) trains (removed when done)
    checkpoints/mlm/<fingerprint>/  the same while a backbone is adapted
    timings/<model>/<unit>.json     a fold's wall-clock time and speed; timings/<stage>.json a stage's:
                                    figures that change from run to run stay out of what dvc.lock hashes
    live/<model>/<unit>/            a unit's dvclive folder: every step's metrics as it trains (not hashed)
    curves/<model>/<metric>.tsv     a model's training curves, one line per unit (dvc plots; not hashed)
    profile/<model>/<unit>/         trace.json and profile.txt of train.profile_steps steps

Every fold folder of a model sits under one parent (`folds/`), so dvc.yaml declares it as one output
whatever `prepare.n_folds` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.config.model_params import ModelParams


def model_dir(out: Path, name: str) -> Path:
    return Path(out) / "train" / name


def unit_name(fold: int | None, seed: int | None = None) -> str:
    """The folder name of one trained model: fold k (None: the full fit on every row), with its seed when the
    model lists seeds (None: the run's seed, no suffix)."""
    base = "full" if fold is None else f"fold_{fold}"
    return base if seed is None else f"{base}_seed{seed}"


def fold_dir(out: Path, name: str, fold: int | None, seed: int | None = None) -> Path:
    return model_dir(out, name) / "folds" / unit_name(fold, seed)


def pseudo_dir(out: Path, student: str) -> Path:
    return Path(out) / "pseudo" / student


def pseudo_plots_dir(out: Path, student: str) -> Path:
    """The plots of a student's pseudo-labels (outside pseudo/<student>/, whose parquet files `dvc plots` cannot
    read)."""
    return Path(out) / "plots" / "pseudo" / student


def checkpoint_dir(out: Path, name: str, fold: int | None, seed: int | None = None) -> Path:
    return Path(out) / "checkpoints" / name / unit_name(fold, seed)


def mlm_dir(out: Path, fingerprint: str) -> Path:
    return Path(out) / "mlm" / fingerprint / "backbone"


def mlm_checkpoint(out: Path, fingerprint: str) -> Path:
    return Path(out) / "checkpoints" / "mlm" / fingerprint / "checkpoint.pt"


def timings_file(out: Path, name: str, unit: str) -> Path:
    """A trained unit's (`unit_name`: fold_<k>[_seed<s>] or full[_seed<s>]) wall-clock time and speed."""
    return Path(out) / "timings" / name / f"{unit}.json"


def live_dir(out: Path, name: str, unit: str) -> Path:
    """A trained unit's dvclive folder: every step's metrics, speed and layer statistics as it trains."""
    return Path(out) / "live" / name / unit


def curves_dir(out: Path, name: str) -> Path:
    """A model's training curves, one file per metric with every unit's steps (what `dvc plots` draws)."""
    return Path(out) / "curves" / name


def profile_dir(out: Path, name: str, unit: str) -> Path:
    """The profiler's trace of a unit's first steps (train.profile_steps)."""
    return Path(out) / "profile" / name / unit


def stage_timings(out: Path, stage: str) -> Path:
    return Path(out) / "timings" / f"{stage}.json"


# --------------------------------------------------------------------------------------------------
# What trains: a model's units (fold x seed, and the full fits), each one folder under train/<model>/folds/


@dataclass(frozen=True)
class Unit:
    """One model that trains: a fold (None: the full fit on every labelled row) and a seed: `seed` is its folder's
    suffix (None: none), `model_seed` the seed it trains with when the model lists `seeds` (None: the run's)."""

    fold: int | None
    seed: int | None = None
    model_seed: int | None = None

    @property
    def name(self) -> str:
        return unit_name(self.fold, self.seed)

    @property
    def label(self) -> str:
        where = "full fit" if self.fold is None else f"fold {self.fold}"
        return where if self.seed is None else f"{where} seed {self.seed}"

    def run_seed(self, seed: int) -> int:
        """The seed this unit trains with (its fingerprint holds it), given the run's `seed`."""
        if self.model_seed is not None:
            return self.model_seed
        return seed if self.seed is None else self.seed


def model_seeds(spec: ModelParams, seed: int) -> list[int]:
    """The seeds a model trains with: its `seeds`, or the run's `seed` alone."""
    return list(spec.seeds) or [seed]


def _seed_units(spec: ModelParams, fold: int | None) -> list[Unit]:
    """A fold's (or the full fit's) units, one per seed of the model. The first seed it lists keeps the plain
    folder (`fold_<k>`), every other one gets `_seed<s>`: the names and fingerprints depend on the model's seeds
    alone, so changing the run's `seed` retrains nothing of a model that lists its own, and a model that lists
    seeds for the first time, the seed it trained with first, keeps the folds it trained."""
    if not spec.seeds:
        return [Unit(fold)]
    return [Unit(fold, None if i == 0 else s, s) for i, s in enumerate(spec.seeds)]


def fold_units(spec: ModelParams, fold_ids: list[int], seed: int) -> list[Unit]:
    """Every (fold, seed) model of the CV: their OOF predictions are averaged over the seeds."""
    return [unit for k in fold_ids for unit in _seed_units(spec, k)]


def full_units(spec: ModelParams, seed: int) -> list[Unit]:
    """The full-fit models (one per seed), or none when full_fit is off."""
    return [] if spec.full_fit == "off" else _seed_units(spec, None)


def inference_units(spec: ModelParams, fold_ids: list[int], seed: int) -> list[Unit]:
    """What 05_infer averages for this model: the fold models, the full fits beside them, or the full fits alone."""
    if spec.full_fit == "alone":
        return full_units(spec, seed)
    return fold_units(spec, fold_ids, seed) + full_units(spec, seed)
