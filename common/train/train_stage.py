"""Stage 02_train's logic: every requested fold of one model, then its OOF file and metrics.

A fold counts as trained only when its folder holds predictions made with the same fingerprint (settings,
backbone, seed, the current folds and essays, its pseudo-labels: `training.fold_fingerprint`), so re-running
the stage after a crash only trains what is missing (and `train_fold` resumes the interrupted fold from its
checkpoint), while a fold trained on other folds or essays is trained again.

Under `accelerate launch` / `torchrun` every process trains the same fold (data parallel) and only the
main process writes: the fold folder is staged and renamed by it alone. `train_in_workers` is the other
kind of parallelism: several folds at once, one process per GPU, each a plain single-fold run of the stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import yaml

from common.config.layout import (
    Unit,
    checkpoint_dir,
    curves_dir,
    fold_dir,
    fold_units,
    full_units,
    live_dir,
    mlm_checkpoint,
    mlm_dir,
    model_dir,
    model_seeds,
    profile_dir,
    pseudo_dir,
    timings_file,
)
from common.config.loader import plain
from common.config.model_params import ModelParams
from common.config.params import Params
from common.config.stage import INSIDE_STAGE
from common.core.errors import PipelineError
from common.core.io import staged_dir, write_csv, write_json, write_parquet
from common.core.tracking import check_trackers, training_curves, write_headline
from common.prepare.folds import folds_fingerprint
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores
from common.train.pseudo import StudentPseudo
from common.train.training import (
    STEP_TIMINGS,
    Telemetry,
    TrainingError,
    add_texts,
    data_fingerprint,
    fold_fingerprint,
    fold_pseudo_labels,
    tokenize_train,
    train_fold,
    unit_settings,
)

log = logging.getLogger(__name__)

TIMINGS = ("seconds", "train_tokens_per_second")
"""A fold's figures that change from run to run: kept in timings/<model>/fold_<k>.json, outside train/,
whose hashes dvc.lock tracks (the same params reproduce everything else there)."""


def is_main_process() -> bool:
    """True outside data parallelism and on its rank 0 (torchrun and accelerate launch set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def data_parallel() -> bool:
    """True under torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# What torchrun / accelerate launch set: a fold worker is a plain single process, so it gets none of it.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def trained_fingerprint(folder: Path) -> str | None:
    """The fingerprint a trained fold folder was made with, or None when it is incomplete, unreadable or absent
    (such a fold trains again)."""
    config = trained_config(folder)
    return None if config is None else config.get("fingerprint")


def unit_fingerprints(out: Path, spec: ModelParams, fold_ids: list[int], seed: int) -> dict[str, str | None]:
    """{unit name: its trained fingerprint (None: not trained)} of the model's fold models: what a teacher's
    pseudo-labels record of the folds that made them, and what its student compares."""
    return {u.name: trained_fingerprint(fold_dir(out, spec.name, u.fold, u.seed))
            for u in fold_units(spec, fold_ids, seed)}


def trained_config(folder: Path) -> dict | None:
    """A complete fold folder's train_config.json, or None when the folder is incomplete or unreadable."""
    from common.models.text_model import TextModel, is_text_model

    needed = ("train_config.json", "oof.parquet", "metrics.json", "log.csv")
    if not all((folder / name).is_file() for name in needed):
        return None
    if is_text_model(folder):
        if TextModel.problem(folder) is not None:
            return None
    elif not all((folder / name).is_file() for name in ("scorer.json", "tokenizer_config.json")) or \
            not _weights_readable(folder):
        return None
    try:
        config = json.loads((folder / "train_config.json").read_text(encoding="utf-8"))
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _weights_readable(folder: Path) -> bool:
    """The fold's weights header opens (a copy cut short does not): model.safetensors, or a LoRA adapter."""
    from common.core.artifact_checks import safetensors_problem

    return (folder / "adapter").is_dir() or safetensors_problem(folder / "model.safetensors") is None


def train_model(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str], out: Path, seed: int,
                only_folds: list[int], device: str, step: str = "all", pseudo: StudentPseudo | None = None,
                telemetry: Telemetry | None = None, headline: Path | None = None) -> None:
    """Train the requested folds of `spec` (all when `only_folds` is empty), once per seed, then its full
    fit (when asked for and every fold is trained), and collect its OOF file.

    `step` "fit" only trains, "collect" only writes the model's OOF file and metrics (every fold must be
    trained on the current folds), "all" does both, the OOF file once every fold exists. `telemetry` says
    which trackers, layer statistics and profiler each unit gets (its dvclive folder is `layout.live_dir`);
    `headline` is where the model's headline figures go for `dvc exp show` (None: nowhere).
    """
    all_folds = sorted(folds["fold"].unique().tolist())
    missing = sorted(set(only_folds) - set(all_folds))
    if missing:
        raise TrainingError(f"train.folds asks for fold(s) {missing}, but folds.parquet has {all_folds}")
    if step == "collect":
        collect_oof(out, spec, folds, seed, required=True, headline=headline)
        return
    main = is_main_process()
    tokenised: list = []  # tokenised once, when a unit trains

    def train(units: list[Unit], stop_fraction: float = 1.0) -> None:
        todo = units_to_train(spec, backbone, folds, texts, pseudo, out, seed, units, stop_fraction)
        for unit in units:
            if unit not in todo:
                log.info("%s %s: already trained with these settings, folds and essays: kept", spec.name, unit.label)
        for unit in todo:
            with fold_lock(checkpoint_dir(out, spec.name, unit.fold, unit.seed), f"{spec.name} {unit.label}", main):
                if not units_to_train(spec, backbone, folds, texts, pseudo, out, seed, [unit], stop_fraction):
                    continue  # finished by the run that held the lock a moment ago
                if not tokenised:
                    tokenised.extend(_model_inputs(spec, backbone, folds, texts, pseudo))
                _train_one_unit(spec, backbone, *tokenised, unit, out, seed, device, main, stop_fraction,
                                telemetry or Telemetry())
                if main:  # the curves grow fold by fold while a long run goes on
                    write_curves(out, spec, seed, all_folds)

    train(fold_units(spec, only_folds or all_folds, seed))
    if full_units(spec, seed) and not only_folds:
        train(full_units(spec, seed), cv_stop_fraction(out, spec, all_folds, seed))
    if main and not only_folds:
        prune_folds(out, spec, all_folds, seed)
        write_curves(out, spec, seed, all_folds)
    if main and step == "all":
        collect_oof(out, spec, folds, seed, headline=headline)


def units_to_train(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str],
                   pseudo: StudentPseudo | None, out: Path, seed: int, units: list[Unit],
                   stop_fraction: float = 1.0) -> list[Unit]:
    """The units without a complete folder of the current fingerprint (no tokenising)."""
    source = data_fingerprint(folds, texts, pseudo.texts if pseudo is not None else ())
    todo = []
    for unit in units:
        labels = fold_pseudo_labels(pseudo.labels, unit.fold) if pseudo is not None else None
        wanted = fold_fingerprint(spec, backbone, source, labels, unit.fold, unit.run_seed(seed),
                                  stop_fraction if unit.fold is None else None)
        if trained_fingerprint(fold_dir(out, spec.name, unit.fold, unit.seed)) != wanted:
            todo.append(unit)
    return todo


def folds_to_train(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str],
                   pseudo: StudentPseudo | None, out: Path, seed: int, candidates: list[int]) -> list[int]:
    """The folds among `candidates` with a seed not trained on the current fingerprint (no tokenising)."""
    pending = units_to_train(spec, backbone, folds, texts, pseudo, out, seed, fold_units(spec, candidates, seed))
    return sorted({unit.fold for unit in pending})


def cv_stop_fraction(out: Path, spec: ModelParams, fold_ids: list[int], seed: int) -> float:
    """Where CV stopped, as a share of the last stage's steps, averaged over the trained fold models: the
    best eval step's share with keep_best, else 1 (the folds trained to the end)."""
    if not spec.keep_best:
        return 1.0
    last = len(spec.stages)
    shares = []
    for unit in fold_units(spec, fold_ids, seed):
        folder = fold_dir(out, spec.name, unit.fold, unit.seed)
        best = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("best_step")
        steps = pd.read_csv(folder / "log.csv")
        steps = steps.loc[steps["stage"] == last, "step"]
        if best is None or best < 0 or steps.empty:
            shares.append(1.0)
        else:
            shares.append(float((steps <= best).sum()) / len(steps))
    return round(float(np.mean(shares)), 4)


def _model_inputs(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str],
                  pseudo: StudentPseudo | None) -> tuple:
    """What a model's units train on, made once per stage run: (tokenizer, token ids) of a transformer, (None, the
    n-gram counts) of a text model."""
    if spec.kind == "tfidf":
        from common.models.text_model import text_data

        data = text_data(spec, folds, texts)
        data.source = data_fingerprint(folds, texts)
        return None, data
    return tokenize_train(spec, backbone, folds, texts, pseudo)


def _train_one_unit(spec: ModelParams, backbone: str, tokenizer, data, unit: Unit, out: Path, seed: int,
                    device: str, main: bool, stop_fraction: float, telemetry: Telemetry) -> None:
    final = fold_dir(out, spec.name, unit.fold, unit.seed)
    telemetry = replace(telemetry, live_dir=live_dir(out, spec.name, unit.name), run_name=f"{spec.name}/{unit.name}",
                        profile_dir=profile_dir(out, spec.name, unit.name))
    ckpt = checkpoint_dir(out, spec.name, unit.fold, unit.seed)
    run_seed = unit.run_seed(seed)
    fraction = stop_fraction if unit.fold is None else 1.0
    if spec.kind == "tfidf":
        if main:  # no data parallelism for a text model: rank 0 fits it, the others wait for nothing
            _train_text_unit(spec, data, unit, final, out, run_seed, fraction)
        return
    if not main:  # data parallel: rank 0 alone writes the fold folder
        train_fold(spec, backbone, tokenizer, data, unit.fold, final, ckpt, run_seed, device, stop_fraction=fraction,
                   telemetry=replace(telemetry, live_dir=None))
        return
    with staged_dir(final) as tmp:
        result = train_fold(spec, backbone, tokenizer, data, unit.fold, tmp, ckpt, run_seed, device,
                            stop_fraction=fraction, telemetry=telemetry)
        write_parquet(tmp / "oof.parquet", result.oof)
        write_csv(tmp / "log.csv", reproducible_log(result.log))
        write_json(tmp / "metrics.json", {k: v for k, v in result.metrics.items() if k not in TIMINGS})
    if unit.fold is not None:  # only now, the fold's new model in place, does the OOF file describe another
        _remove_stale_oof(out, spec.name, unit.label)
    write_json(timings_file(out, spec.name, unit.name), {k: result.metrics[k] for k in TIMINGS})
    if unit.fold is None:
        log.info("%s %s: trained on every labelled row (%.0f%% of the last stage, where CV stopped) in %.0f s",
                 spec.name, unit.label, 100 * fraction, result.metrics["seconds"])
    else:
        log.info("%s %s: held-out QWK (rounded) %.4f in %.0f s", spec.name, unit.label,
                 result.metrics["qwk_rounded"], result.metrics["seconds"])


def _train_text_unit(spec: ModelParams, data, unit: Unit, final: Path, out: Path, seed: int,
                     stop_fraction: float) -> None:
    """One fold (or the full fit) of a text model, written like a transformer's fold folder."""
    from common.models.text_model import train_text_fold

    fingerprint = fold_fingerprint(spec, "", data.source, None, unit.fold, seed,
                                   stop_fraction if unit.fold is None else None)
    with staged_dir(final) as tmp:
        oof, metrics, steps = train_text_fold(spec, data, unit.fold, tmp, seed)
        write_json(tmp / "train_config.json", {"kind": spec.kind, "model": unit_settings(spec), "backbone": "",
                                               "fold": unit.fold, "seed": seed, "fingerprint": fingerprint,
                                               "folds": data.folds_hash})
        write_parquet(tmp / "oof.parquet", oof)
        write_csv(tmp / "log.csv", steps)
        write_json(tmp / "metrics.json", {k: v for k, v in metrics.items() if k not in TIMINGS})
    if unit.fold is not None:
        _remove_stale_oof(out, spec.name, unit.label)
    write_json(timings_file(out, spec.name, unit.name), {k: metrics[k] for k in TIMINGS})
    score = metrics["qwk_rounded"]
    log.info("%s %s: %s (%d features) in %.0f s", spec.name, unit.label,
             "trained on every labelled row" if score is None else f"held-out QWK (rounded) {score:.4f}",
             metrics["n_features"], metrics["seconds"])


def _remove_stale_oof(out: Path, name: str, label: str) -> None:
    """The model's oof.parquet no longer describes it once a fold has trained again (removed after, not before:
    a fold that fails leaves the model's files as they were)."""
    stale_oof = model_dir(out, name) / "oof.parquet"
    if stale_oof.exists():
        log.info("%s: removing %s (%s trained again)", name, stale_oof, label)
        stale_oof.unlink(missing_ok=True)  # fold workers may race for it


LOCK_FILE = "lock"


@contextlib.contextmanager
def fold_lock(folder: Path, what: str, take: bool = True) -> Iterator[None]:
    """One process at a time trains a fold: a lock file in its checkpoint folder names the holder.

    Two runs of the same fold would write one checkpoint in turn and each resume the other's. A lock whose
    holder is a process of this host that no longer runs (killed) is taken over; any other is an error
    saying who holds it. `take=False` (data-parallel ranks other than 0) does nothing.
    """
    if not take:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            # Our own pid in a lock we did not take: a process of an earlier boot or container had it.
            dead = not _running(holder.get("pid")) or holder.get("pid") == me["pid"]
            if holder.get("host") == me["host"] and dead:
                log.warning("%s: lock %s of process %s, which no longer runs, taken over", what, lock,
                            holder.get("pid"))
                lock.unlink(missing_ok=True)
                continue
            raise TrainingError(_busy_message(what, holder, lock)) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _busy_message(what: str, holder: dict, lock: Path) -> str:
    return (f"{what} is being trained by process {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('since')} (lock {lock}); two runs of one fold would share its checkpoint. Wait "
            f"for it or stop it; if that process is gone, delete {lock}")


def busy_lock(folder: Path, what: str) -> str | None:
    """Why `fold_lock` would refuse the unit whose checkpoint folder is `folder` now (a live process of this host,
    or one of another host, holds its lock), or None. Looks only: takes nothing."""
    lock = folder / LOCK_FILE
    if not lock.is_file():
        return None
    holder = _lock_holder(lock)
    if holder.get("host") == socket.gethostname() and (not _running(holder.get("pid"))
                                                       or holder.get("pid") == os.getpid()):
        return None
    return _busy_message(what, holder, lock)


def _lock_holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _running(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reproducible_log(steps: pd.DataFrame) -> pd.DataFrame:
    """A fold's step log without the columns that change from run to run (speed, memory) or per layer group
    (those stay in its dvclive folder): the fold's log.csv, which dvc.lock hashes."""
    return steps.drop(columns=[c for c in steps.columns if c in STEP_TIMINGS or "/" in c])


def write_curves(out: Path, spec: ModelParams, seed: int, fold_ids: list[int]) -> None:
    """The model's training curves (`curves/<model>/<metric>.tsv`, one line per unit, for `dvc plots`) from
    the dvclive folders of its current units (`fold_ids` x seeds, the full fit) trained so far."""
    units = fold_units(spec, fold_ids, seed) + full_units(spec, seed)
    training_curves({u.name: live_dir(out, spec.name, u.name) for u in units}, curves_dir(out, spec.name))


def prune_folds(out: Path, spec: ModelParams, keep: list[int], seed: int) -> None:
    """Remove the model's fold folders that neither the current folds.parquet nor its seeds and full fit have
    (after n_folds shrank, a seed was dropped or the full fit turned off)."""
    parent = model_dir(out, spec.name) / "folds"
    wanted = {unit.name for unit in fold_units(spec, keep, seed) + full_units(spec, seed)}
    for stale in sorted(parent.iterdir()) if parent.is_dir() else []:
        if stale.is_dir() and stale.name.startswith(("fold_", "full")) and stale.name not in wanted:
            log.info("%s: removing %s (not a fold, seed or full fit of the current settings)", spec.name, stale)
            shutil.rmtree(stale)
            shutil.rmtree(live_dir(out, spec.name, stale.name), ignore_errors=True)


def collect_oof(out: Path, spec: ModelParams, folds: pd.DataFrame, seed: int, required: bool = False,
                headline: Path | None = None) -> bool:
    """Write the model's `oof.parquet`, `metrics.json` and `log.csv` once every fold is trained on these folds.

    With several seeds, a fold's OOF predictions (and class probabilities) are the mean over its seeds, as
    05_infer averages the test predictions; metrics.json also scores each seed alone. A fold trained on
    another folds table (00_prepare re-run since) counts as missing. With `required`, a missing fold is an
    error naming the command that trains it; otherwise it is logged and False returned.
    """
    name = spec.name
    fold_ids = sorted(folds["fold"].unique().tolist())
    units = fold_units(spec, fold_ids, seed)
    seeds = model_seeds(spec, seed)
    current = folds_fingerprint(folds)
    absent, stale = [], []
    for unit in units:
        config = trained_config(fold_dir(out, name, unit.fold, unit.seed))
        if config is None:
            absent.append(unit.fold)
        elif config.get("folds") != current:
            stale.append(unit.fold)
    absent, stale = sorted(set(absent)), sorted(set(stale) - set(absent))
    if absent or stale:
        what = ", ".join(p for p in (f"fold(s) {absent} not trained" if absent else "",
                                     f"fold(s) {stale} trained on other folds (00_prepare ran since)" if stale
                                     else "") if p)
        if required:
            raise TrainingError(f"{name}: {what}, so its oof.parquet cannot be written. Train them: python "
                                f"02_train/run.py train.model={name}")
        log.info("%s: %s; OOF file written once every fold is trained", name, what)
        return False
    folder = model_dir(out, name)
    per_unit = {unit: pd.read_parquet(fold_dir(out, name, unit.fold, unit.seed) / "oof.parquet") for unit in units}
    oof = pd.concat(per_unit.values(), ignore_index=True).groupby(["essay_id", "fold"], sort=False).mean()
    oof = oof.reset_index()
    metrics = {**_oof_scores(folds, oof),
               "folds_fingerprint": current,
               "folds": {_summary_key(unit): _fold_summary(fold_dir(out, name, unit.fold, unit.seed))
                         for unit in units},
               "mlm": _mlm_summary(fold_dir(out, name, units[0].fold, units[0].seed))}
    if len(seeds) > 1:
        metrics["seeds"] = {str(s): _oof_scores(
            folds, pd.concat([per_unit[u] for u in units if u.run_seed(seed) == s]))["qwk_rounded"] for s in seeds}
    logs = [pd.read_csv(fold_dir(out, name, u.fold, u.seed) / "log.csv").assign(fold=u.fold) for u in units]
    if len(seeds) > 1:
        logs = [frame.assign(seed=u.run_seed(seed)) for frame, u in zip(logs, units, strict=True)]
    write_parquet(folder / "oof.parquet", oof)
    write_csv(folder / "log.csv", pd.concat(logs, ignore_index=True))
    write_json(folder / "metrics.json", metrics)
    if headline is not None:
        write_headline(headline, {k: metrics[k] for k in ("qwk_rounded", "qwk_rounded_other", "rmse")}
                       | ({"seeds": metrics["seeds"]} if "seeds" in metrics else {}))
    log.info("%s: OOF QWK (rounded) %.4f on all rows, %s on other-origin rows%s", name, metrics["qwk_rounded"],
             "n/a" if metrics["qwk_rounded_other"] is None else f"{metrics['qwk_rounded_other']:.4f}",
             f" (mean of {len(seeds)} seeds; each alone: " + ", ".join(
                 f"{v:.4f}" for v in metrics["seeds"].values()) + ")" if "seeds" in metrics else "")
    return True


def _summary_key(unit: Unit) -> str:
    """metrics.json's key of a fold model: the fold number, with its seed when the model lists seeds."""
    return str(unit.fold) if unit.seed is None else f"{unit.fold}_seed{unit.seed}"


def _oof_scores(folds: pd.DataFrame, oof: pd.DataFrame) -> dict:
    """Rounded QWK on all and other-origin rows, and RMSE, of OOF predictions."""
    merged = folds[["essay_id", "score", "origin"]].merge(oof, on="essay_id", how="inner")
    other = (merged["origin"] == "other").to_numpy()
    scores = round_scores(merged["pred"].to_numpy())
    y = merged["score"].to_numpy()
    return {"qwk_rounded": qwk(y, scores),
            "qwk_rounded_other": qwk(y[other], scores[other]) if other.any() else None,
            "rmse": float(np.sqrt(np.mean((merged["pred"].to_numpy() - y) ** 2)))}


def _fold_summary(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def _mlm_summary(folder: Path) -> dict | None:
    """Held-out MLM loss before and after, when the fold's backbone was adapted by masked-language modelling."""
    from common.train.mlm import METRICS_FILE

    backbone = json.loads((folder / "train_config.json").read_text(encoding="utf-8")).get("backbone", "")
    path = Path(backbone) / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def check_backbones(backbones: Sequence[tuple[str, str]], params: Params) -> None:
    """Stop before any work (MLM, tokenising, fold workers) when a backbone would not load offline.

    `backbones`: (model name, backbone) of each model that needs one. One message names every such model, the
    key that sets its backbone and the fix, instead of one failure per fold after its start-up.
    """
    from common.core.offline import backbone_problem

    missing = {name: (backbone, why) for name, backbone in backbones
               if (why := backbone_problem(backbone)) is not None}
    if missing:
        keys = {name: f"train.{'models' if name in params.train.models else 'students'}.{name}.backbone"
                if params.train.all_models[name].backbone else "backbone" for name in missing}
        raise PipelineError(
            "; ".join(f"model {name}: {keys[name]}={b!r} {why}" for name, (b, why) in missing.items())
            + ". No stage downloads. Fix: download it once where there is internet ("
            + ", ".join(f"`hf download {b}`" for b in dict.fromkeys(b for b, _ in missing.values()))
            + "), or set that key to a local model folder (config.json, weights, tokenizer)")


def train_models(params: Params, script: Path) -> None:
    """Stage 02_train: every model of train.models / train.students (or train.model alone), fold by fold
    (several at once with train.fold_workers, each a run of `script`), then its full fit and OOF file."""
    import torch

    from common.prepare.data import load_competition_data
    from common.scoring.oof import read_folds
    from common.train.pseudo import load_student_pseudo, read_external

    out, t, prep = params.output_dir, params.train, params.prepare
    check_trackers(t.tracking)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    folds = read_folds(out / "prepare" / "folds.parquet")
    fold_ids = sorted(folds["fold"].unique().tolist())
    if len(fold_ids) != prep.n_folds:
        raise PipelineError(f"{out / 'prepare' / 'folds.parquet'} has {len(fold_ids)} folds but prepare.n_folds="
                            f"{prep.n_folds}: re-run 00_prepare (python 00_prepare/run.py) or set prepare.n_folds="
                            f"{len(fold_ids)}")
    data = texts = None
    if t.step != "collect":
        check_backbones([(name, spec.backbone or params.backbone) for name, spec in t.all_models.items()
                         if (not t.model or name == t.model) and spec.kind == "transformer"], params)
        data = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file)
        column = folds[["essay_id"]].merge(data.train, on="essay_id", how="left")["full_text"]
        if column.isna().any():
            raise PipelineError(
                f"{params.input_dir / prep.train_file} lacks essays of folds.parquet: re-run 00_prepare")
        texts = column.tolist()
    for name, spec in t.all_models.items():
        if t.model and name != t.model:
            continue
        backbone, pseudo = (spec.backbone or params.backbone) if spec.kind == "transformer" else "", None
        if t.step != "collect" and spec.uses_pseudo:
            pseudo = load_student_pseudo(pseudo_dir(out, name), out / "prepare" / "external.parquet", fold_ids, texts,
                                         folds_fingerprint(folds), spec.teacher,
                                         unit_fingerprints(out, t.all_models[spec.teacher], fold_ids, params.seed))
        if t.step != "collect" and spec.mlm.epochs > 0:
            external = read_external(out / "prepare" / "external.parquet")
            mlm_texts = [*data.train["full_text"], *data.test["full_text"], *external["full_text"]]
            planned = str(mlm_dir(out, mlm_fingerprint(spec, backbone, mlm_texts, params.seed)))
            if t.lr_find or _needs_training(spec, planned, folds, texts, pseudo, out, params.seed, t.folds):
                backbone = adapted_backbone(spec, backbone, mlm_texts, out, params.seed, t.device)
            else:  # every fold is kept: no MLM run (its cache may be gone, e.g. after dvc pull elsewhere)
                backbone = planned
        if t.lr_find and spec.kind != "transformer":
            log.info("%s: a %s model has no learning rate: train.lr_find skips it", name, spec.kind)
            continue
        if t.lr_find:
            from common.train.lr_find import find_lr

            find_lr(spec, backbone, folds, texts or [], out, params.seed, t.device, pseudo)
            continue
        todo = t.folds or fold_ids
        workers = t.fold_workers
        if workers != 1 and data_parallel():
            log.info("%s: data parallel over %s processes: every process trains each fold together, "
                     "train.fold_workers=%d not used", name, os.environ["WORLD_SIZE"], workers)
            workers = 1
        if spec.kind != "transformer":
            workers = 1  # a text model fits in seconds to minutes: no worker processes
        if t.step != "collect" and workers != 1 and len(todo) > 1:
            pending = folds_to_train(spec, backbone, folds, texts, pseudo, out, params.seed, todo)
            if pending:
                train_in_workers(params, name, pending, script)
        # Every fold is trained by now (or trains here, one after the other), then the full fit and the OOF file.
        train_model(spec, backbone, folds, texts or [], out, params.seed, t.folds, t.device, t.step, pseudo,
                    Telemetry(trackers=tuple(t.tracking), layer_stats=t.layer_stats, profile_steps=t.profile_steps),
                    params.metrics_dir / "train" / f"{name}.json")


def _needs_training(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str],
                    pseudo: StudentPseudo | None, out: Path, seed: int, only_folds: list[int]) -> bool:
    """Whether a fold model of `only_folds` (all: empty), or the full fit when all are asked for, trains."""
    fold_ids = sorted(folds["fold"].unique().tolist())
    if folds_to_train(spec, backbone, folds, texts, pseudo, out, seed, only_folds or fold_ids):
        return True
    full = full_units(spec, seed) if not only_folds else []
    return bool(full) and bool(units_to_train(spec, backbone, folds, texts, pseudo, out, seed, full,
                                              cv_stop_fraction(out, spec, fold_ids, seed)))


# --------------------------------------------------------------------------------------------------
# Backbones adapted by masked-language modelling


def mlm_seed(spec: ModelParams, seed: int) -> int:
    """The seed of a model's MLM run: its first seed when it lists `seeds` (the run's `seed` then changes nothing
    of the model), else the run's."""
    return model_seeds(spec, seed)[0]


def mlm_fingerprint(spec: ModelParams, base: str, texts: list[str], seed: int) -> str:
    """Hash of what an MLM-adapted backbone depends on: base backbone, MLM settings, newline token, essays."""
    digest = hashlib.sha256(json.dumps({"base": base, "mlm": asdict(spec.mlm), "seed": mlm_seed(spec, seed),
                                        "newline": spec.add_newline_tokens}, sort_keys=True).encode())
    add_texts(digest, texts)
    return digest.hexdigest()[:16]


def adapted_backbone(spec: ModelParams, base: str, texts: list[str], out: Path, seed: int, device: str) -> str:
    """The backbone `spec` fine-tunes: `base`, or its MLM-adapted copy when spec.mlm.epochs > 0.

    The adapted copy is made once per (base, MLM settings, essays, seed) and kept under
    <out>/mlm/<fingerprint>/backbone, so models that share those settings share one MLM run and a re-run
    finds it done. Under data parallelism every process takes part (the engine gives each a share of the
    batches) and the main process writes the folder; a killed run resumes from its last epoch's checkpoint.
    """
    if spec.mlm.epochs <= 0:
        return base
    from common.train.mlm import METRICS_FILE, adapt_backbone

    fingerprint = mlm_fingerprint(spec, base, texts, seed)
    folder = mlm_dir(out, fingerprint)
    if (folder / METRICS_FILE).is_file():
        log.info("%s: MLM-adapted backbone found in %s", spec.name, folder)
        return str(folder)
    m = spec.mlm
    log.info("%s: MLM domain adaptation of %s on %d essays -> %s", spec.name, base, len(texts), folder)
    checkpoint = mlm_checkpoint(out, fingerprint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    metrics = adapt_backbone(base, texts, folder, mlm_probability=m.probability, whole_word_masking=m.whole_word,
                             max_length=m.max_length, epochs=m.epochs, batch_size=m.batch_size, lr=m.lr,
                             held_out_share=m.held_out_share, add_newline_tokens=spec.add_newline_tokens,
                             seed=mlm_seed(spec, seed), device=device, mixed_precision=spec.mixed_precision,
                             checkpoint=checkpoint, fingerprint=fingerprint)
    log.info("%s: held-out MLM loss %.4f -> %.4f", spec.name, metrics["held_out_loss_before"],
             metrics["held_out_loss_after"])
    return str(folder)


# --------------------------------------------------------------------------------------------------
# Several folds at once, one process per GPU


def worker_devices(device: str, workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES value of each worker slot (None: leave it as it is, i.e. CPU workers)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else [
            str(i) for i in range(torch.cuda.device_count())]
        n = workers or len(gpus)
        if n > len(gpus):
            raise TrainingError(f"train.fold_workers={workers} but only {len(gpus)} GPU(s) are visible ({gpus}); "
                                "use at most one worker per GPU, or 0 for one per visible GPU")
        return gpus[:n]
    return [None] * max(workers, 1)


PROGRESS_EVERY = 60.0
"""Seconds between the console lines that say where each fold worker is (its log's latest line)."""


def latest_progress(log_file: Path, width: int = 160) -> str:
    """The last non-empty line of a worker's log, where a progress bar's latest update counts as a line (tqdm
    rewrites its bar after a carriage return), cut to `width` characters; "" before the log holds any."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [part.strip() for part in tail.replace("\r", "\n").split("\n") if part.strip()]
    return lines[-1][:width] if lines else ""


def train_in_workers(params: Params, name: str, folds: list[int], script: Path) -> None:
    """Train `folds` of model `name` in parallel processes (`python <script> ...`, one fold each).

    Each worker is a plain single-fold, single-process run of the stage with the same params (written to
    <out>/checkpoints/<name>/params.yaml), its own GPU on CUDA or, on CPU, the thread count a serial run has (so
    both train to the same bits), and its log appended to <out>/checkpoints/<name>/fold_<k>.log. Every
    PROGRESS_EVERY seconds the console gets one line per running fold: its log's latest line (progress bar or
    message). Workers die with the stage (`start_worker`). A fold whose lock a live process holds is not started
    (its log is that process's). A failed fold does not stop the others; the stage then fails naming it, and a
    re-run trains only what is missing.
    """
    import torch
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out, spec = params.output_dir, params.train.all_models[name]
    slots = worker_devices(params.train.device, params.train.fold_workers)[: len(folds)]
    work = checkpoint_dir(out, name, 0).parent
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(plain(params), sort_keys=False), encoding="utf-8")
    # A serial run's thread count: a CPU reduction split over other threads rounds otherwise (by ~1e-7).
    threads = params.train.num_threads or torch.get_num_threads()
    queue, running, failed, busy = list(folds), {}, [], []
    log.info("%s: training folds %s with %d workers (%s); their logs: %s", name, folds, len(slots),
             ", ".join(f"GPU {s}" for s in slots) if slots[0] is not None
             else f"CPU, {threads} threads each, as a serial run has",
             ", ".join(str(work / f"fold_{fold}.log") for fold in folds))
    shown = time.monotonic()
    def stop(signum, frame):  # a killed stage takes its workers with it (the finally below)
        raise TrainingError(f"{name}: stopped by signal {signum}; the running folds were stopped too")

    previous = signal.signal(signal.SIGTERM, stop)
    # Log lines go through tqdm while the folds bar shows: each on a line of its own, the bar drawn again below it.
    with logging_redirect_tqdm(), tqdm(total=len(folds), desc=f"{name} folds", unit="fold") as progress:
        try:
            while queue or running:
                for slot, gpu in enumerate(slots):
                    if slot in running or not queue:
                        continue
                    fold = queue.pop(0)
                    holders = [m for u in fold_units(spec, [fold], params.seed) if (m := busy_lock(
                        checkpoint_dir(out, name, u.fold, u.seed), f"{name} {u.label}")) is not None]
                    if holders:  # its log is that process's: not started, nothing truncated
                        log.error("%s", "\n".join(holders))
                        busy.append(fold)
                        continue
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.resolve().parents[1]),
                                                                        os.environ.get("PYTHONPATH", "")])}
                    for variable in _LAUNCHER_VARIABLES:
                        env.pop(variable, None)
                    env = {k: v for k, v in env.items() if not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}
                    env[INSIDE_STAGE] = script.resolve().parent.name  # its runtime is inside this stage's
                    if gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = gpu
                    cmd = [sys.executable, str(script), "--params", str(params_file), f"train.model={name}",
                           f"train.folds=[{fold}]", "train.step=fit", "train.fold_workers=1",
                           f"train.num_threads={threads}"]
                    proc, handle = start_worker(cmd, env, work / f"fold_{fold}.log")
                    running[slot] = (fold, proc, handle)
                    log.info("%s fold %d: started on %s, log %s", name, fold,
                             f"GPU {gpu}" if gpu is not None else "CPU", work / f"fold_{fold}.log")
                for slot, (fold, proc, handle) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    handle.close()
                    del running[slot]
                    progress.update(1)
                    log.info("%s fold %d: worker finished (exit %d); its last line: %s", name, fold, proc.returncode,
                             latest_progress(work / f"fold_{fold}.log"))
                    if proc.returncode:
                        failed.append(fold)
                        tail = (work / f"fold_{fold}.log").read_text(encoding="utf-8").splitlines()[-15:]
                        log.error("%s fold %d failed (exit %d); end of %s:\n%s", name, fold, proc.returncode,
                                  work / f"fold_{fold}.log", "\n".join(tail))
                if running and time.monotonic() - shown >= PROGRESS_EVERY:
                    shown = time.monotonic()
                    for fold, _, _ in sorted(running.values(), key=lambda job: job[0]):
                        log.info("%s fold %d: %s", name, fold, latest_progress(work / f"fold_{fold}.log") or "starting")
                time.sleep(0.5)
        finally:
            signal.signal(signal.SIGTERM, previous)
            for _, proc, handle in running.values():
                proc.terminate()
                proc.wait()
                handle.close()
    if busy:
        raise TrainingError(f"{name}: fold(s) {sorted(busy)} are being trained by another process (above), so they were "
                            "not started" + (f", and fold(s) {sorted(failed)} failed in their workers (logs in {work})"
                                             if failed else "") + "; the others are kept. Wait for that process or "
                            "stop it, then re-run: only the missing folds train again.")
    if failed:
        raise TrainingError(f"{name}: fold(s) {sorted(failed)} failed in their workers (logs in {work}); the others "
                            "are kept. Fix the cause and re-run: only the missing folds train again.")


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal the kernel sends a process when the thread that started it ends (Linux)."""


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when this process dies, however it dies (SIGKILL and the
    out-of-memory killer included, where no handler or `finally` runs); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)

    return preexec


def start_worker(cmd: list[str], env: dict[str, str] | None, log_file: Path) -> tuple[subprocess.Popen, IO[str]]:
    """Start a fold worker, its output appended to `log_file` (never truncated: a process of an earlier run may
    still write there), and bound to die with this process (`_die_with_parent`). The caller closes the handle."""
    handle = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (the caller closes it)
    handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: started by process {os.getpid()}\n")
    handle.flush()
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent()), handle
