"""Stage 02_train's logic: every requested model, fold by fold, then its full fit and its OOF file.

`train_models` (the stage) checks the backbones, reads the essays, hashes them once (`data_fingerprint`) and, per
model, adapts its backbone (common.train.mlm_backbone), starts fold workers when asked (common.train.fold_workers)
and calls `train_model`: the units whose folder lacks the current fingerprint (common.train.trained_folds) train,
each under its lock (common.train.locks), then the OOF file is collected (common.train.model_oof).

A fold counts as trained only when its folder holds predictions made with the same fingerprint (settings,
backbone, seed, the current folds and essays, its pseudo-labels: `fingerprints.fold_fingerprint`), so re-running
the stage after a crash only trains what is missing (and `train_fold` resumes the interrupted fold from its
checkpoint), while a fold trained on other folds or essays is trained again. Under `accelerate launch` /
`torchrun` every process trains the same fold (data parallel) and only the main process writes: the fold folder
is staged and renamed by it alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from common.config.layout import (
    Unit,
    checkpoint_dir,
    curves_dir,
    fold_dir,
    fold_units,
    full_units,
    live_dir,
    mlm_dir,
    model_dir,
    profile_dir,
    pseudo_dir,
    timings_file,
)
from common.config.model_params import ModelParams
from common.config.params import Params
from common.core.errors import PipelineError
from common.core.io import staged_dir, write_csv, write_json, write_parquet
from common.core.tracking import check_trackers, training_curves
from common.prepare.folds import folds_fingerprint
from common.train.engine import TrainingError
from common.train.fingerprints import data_fingerprint, fold_fingerprint, unit_settings
from common.train.fold_run import Telemetry
from common.train.fold_workers import train_in_workers
from common.train.locks import fold_lock
from common.train.mlm_backbone import adapted_backbone, mlm_fingerprint
from common.train.model_oof import collect_oof
from common.train.pseudo import StudentPseudo
from common.train.rows import fold_pseudo_labels, tokenize_train
from common.train.trained_folds import trained_fingerprint, unit_fingerprints
from common.train.training import STEP_TIMINGS, train_fold

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


def train_model(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str], out: Path, seed: int,
                only_folds: list[int], device: str, step: str = "all", pseudo: StudentPseudo | None = None,
                telemetry: Telemetry | None = None, headline: Path | None = None, source: str | None = None) -> None:
    """Train the requested folds of `spec` (all when `only_folds` is empty), once per seed, then its full
    fit (when asked for and every fold is trained), and collect its OOF file.

    `step` "fit" only trains, "collect" only writes the model's OOF file and metrics (every fold must be
    trained on the current folds), "all" does both, the OOF file once every fold exists. `telemetry` says
    which trackers, layer statistics and profiler each unit gets (its dvclive folder is `layout.live_dir`);
    `headline` is where the model's headline figures go for `dvc exp show` (None: nowhere). `source` is the
    `data_fingerprint` of `folds`, `texts` and the pseudo-labelled essays when the caller has it (hashed here
    otherwise, once for every planning call and the tokenising below).
    """
    all_folds = sorted(folds["fold"].unique().tolist())
    missing = sorted(set(only_folds) - set(all_folds))
    if missing:
        raise TrainingError(f"train.folds asks for fold(s) {missing}, but folds.parquet has {all_folds}")
    if step == "collect":
        collect_oof(out, spec, folds, seed, required=True, headline=headline)
        return
    if source is None:
        source = data_fingerprint(folds, texts, pseudo.texts if pseudo is not None else ())
    main = is_main_process()
    tokenised: list = []  # tokenised once, when a unit trains

    def train(units: list[Unit], stop_fraction: float = 1.0) -> None:
        todo = units_to_train(spec, backbone, source, pseudo, out, seed, units, stop_fraction)
        for unit in units:
            if unit not in todo:
                log.info("%s %s: already trained with these settings, folds and essays: kept", spec.name, unit.label)
        for unit in todo:
            with fold_lock(checkpoint_dir(out, spec.name, unit.fold, unit.seed), f"{spec.name} {unit.label}", main):
                if not units_to_train(spec, backbone, source, pseudo, out, seed, [unit], stop_fraction):
                    continue  # finished by the run that held the lock a moment ago
                if not tokenised:
                    tokenised.extend(_model_inputs(spec, backbone, folds, texts, pseudo, source))
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


def units_to_train(spec: ModelParams, backbone: str, source: str, pseudo: StudentPseudo | None, out: Path,
                   seed: int, units: list[Unit], stop_fraction: float = 1.0) -> list[Unit]:
    """The units without a complete folder of the current fingerprint (no tokenising, no hashing of essays:
    `source` is their `data_fingerprint`)."""
    todo = []
    for unit in units:
        labels = fold_pseudo_labels(pseudo.labels, unit.fold) if pseudo is not None else None
        wanted = fold_fingerprint(spec, backbone, source, labels, unit.fold, unit.run_seed(seed),
                                  stop_fraction if unit.fold is None else None)
        if trained_fingerprint(fold_dir(out, spec.name, unit.fold, unit.seed)) != wanted:
            todo.append(unit)
    return todo


def folds_to_train(spec: ModelParams, backbone: str, source: str, pseudo: StudentPseudo | None, out: Path,
                   seed: int, candidates: list[int]) -> list[int]:
    """The folds among `candidates` with a seed not trained on the current fingerprint (no tokenising)."""
    pending = units_to_train(spec, backbone, source, pseudo, out, seed, fold_units(spec, candidates, seed))
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
                  pseudo: StudentPseudo | None, source: str) -> tuple:
    """What a model's units train on, made once per stage run: (tokenizer, token ids) of a transformer, (None, the
    n-gram counts) of a text model; `source` is their `data_fingerprint` (a text model has no pseudo-labels)."""
    if spec.kind == "tfidf":
        from common.models.text_model import text_data

        data = text_data(spec, folds, texts)
        data.source = source
        return None, data
    return tokenize_train(spec, backbone, folds, texts, pseudo, source)


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
    data = texts = train_source = None
    if t.step != "collect":
        check_backbones([(name, spec.backbone or params.backbone) for name, spec in t.all_models.items()
                         if (not t.model or name == t.model) and spec.kind == "transformer"], params)
        data = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file)
        column = folds[["essay_id"]].merge(data.train, on="essay_id", how="left")["full_text"]
        if column.isna().any():
            raise PipelineError(
                f"{params.input_dir / prep.train_file} lacks essays of folds.parquet: re-run 00_prepare")
        texts = column.tolist()
        # Hashing every essay takes seconds on the competition's data and each model's planning asks for the hash
        # several times (kept units, fold workers, the full fit, each unit again under its lock, tokenising), so it
        # is made here, once per stage run, and handed down as a value: a cache keyed by the data's identity would
        # be fooled by a list changed in place or an id reused once its object is gone.
        train_source = data_fingerprint(folds, texts)
    for name, spec in t.all_models.items():
        if t.model and name != t.model:
            continue
        backbone, pseudo = (spec.backbone or params.backbone) if spec.kind == "transformer" else "", None
        if t.step != "collect" and spec.uses_pseudo:
            pseudo = load_student_pseudo(pseudo_dir(out, name), out / "prepare" / "external.parquet", fold_ids, texts,
                                         folds_fingerprint(folds), spec.teacher,
                                         unit_fingerprints(out, t.all_models[spec.teacher], fold_ids, params.seed))
        # A student's essays include its pseudo-labelled ones: a fingerprint of its own, hashed once for it.
        source = data_fingerprint(folds, texts, pseudo.texts) if pseudo is not None else train_source
        if t.step != "collect" and spec.mlm.epochs > 0:
            external = read_external(out / "prepare" / "external.parquet")
            mlm_texts = [*data.train["full_text"], *data.test["full_text"], *external["full_text"]]
            planned = str(mlm_dir(out, mlm_fingerprint(spec, backbone, mlm_texts, params.seed)))
            if t.lr_find or _needs_training(spec, planned, folds, source, pseudo, out, params.seed, t.folds):
                backbone = adapted_backbone(spec, backbone, mlm_texts, out, params.seed, t.device)
            else:  # every fold is kept: no MLM run (its cache may be gone, e.g. after dvc pull elsewhere)
                backbone = planned
        if t.lr_find and spec.kind != "transformer":
            log.info("%s: a %s model has no learning rate: train.lr_find skips it", name, spec.kind)
            continue
        if t.lr_find:
            from common.train.lr_find import find_lr

            find_lr(spec, backbone, folds, texts or [], out, params.seed, t.device, pseudo, source=source)
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
            pending = folds_to_train(spec, backbone, source, pseudo, out, params.seed, todo)
            if pending:
                train_in_workers(params, name, pending, script)
        # Every fold is trained by now (or trains here, one after the other), then the full fit and the OOF file.
        train_model(spec, backbone, folds, texts or [], out, params.seed, t.folds, t.device, t.step, pseudo,
                    Telemetry(trackers=tuple(t.tracking), layer_stats=t.layer_stats, profile_steps=t.profile_steps),
                    params.metrics_dir / "train" / f"{name}.json", source)


def _needs_training(spec: ModelParams, backbone: str, folds: pd.DataFrame, source: str,
                    pseudo: StudentPseudo | None, out: Path, seed: int, only_folds: list[int]) -> bool:
    """Whether a fold model of `only_folds` (all: empty), or the full fit when all are asked for, trains."""
    fold_ids = sorted(folds["fold"].unique().tolist())
    if folds_to_train(spec, backbone, source, pseudo, out, seed, only_folds or fold_ids):
        return True
    full = full_units(spec, seed) if not only_folds else []
    return bool(full) and bool(units_to_train(spec, backbone, source, pseudo, out, seed, full,
                                              cv_stop_fraction(out, spec, fold_ids, seed)))
