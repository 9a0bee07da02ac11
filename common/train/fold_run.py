"""One fold's training run before its first step: the objects the loop (common.train.training) reads and a
checkpoint saves, and the functions that build them.

`plan_run` checks the fold and settings, seeds, builds the model and every row's ids and targets (a `FoldRun`);
`restore_run` takes the state and weights of an interrupted run's checkpoint; `setup_stage` gives each of the
model's stages its rows, schedule and a fresh optimizer (or the interrupted one's state) as a `StageRun`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from common.config.model_params import ModelParams, StageParams
from common.core.tracking import StepLogger
from common.models import EssayScorer, ScorerConfig
from common.models.tokenization import EssayCollator, TokenSettings, model_collator
from common.train.diagnostics import TrainingWatch
from common.train.engine import (
    Engine,
    TrainingError,
    derived_seed,
    epoch_batches,
    read_checkpoint,
    seed_everything,
    set_rng_state,
)
from common.train.fingerprints import fold_fingerprint
from common.train.optim import AWP, EMA, build_scheduler, named_rate_group, param_groups
from common.train.rows import TrainData, fold_pseudo_labels, soft_targets, stage_rows

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
"""A unit's resumable checkpoint, in its checkpoint folder (removed once the unit is trained)."""


@dataclass
class Telemetry:
    """What a run reports beside its log rows (all off by default: tests, and ranks other than 0)."""

    live_dir: Path | None = None  # the unit's dvclive folder (None: no dvclive)
    run_name: str = ""  # the unit's name in trackers, e.g. "deberta-v3-large/fold_0"
    trackers: Sequence[str] = ()  # wandb / mlflow beside dvclive
    layer_stats: bool = False  # gradient and activation statistics per layer group at eval steps
    profile_steps: int = 0  # torch.profiler over this many optimizer steps (0: off)
    profile_dir: Path | None = None  # where the profiler's trace.json and profile.txt go


@dataclass
class RunState:
    """Everything a resumed run needs besides model/optimizer tensors."""

    stage: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    step: int = 0  # optimizer steps in this stage
    global_step: int = 0
    best_qwk: float = -2.0
    best_step: int = -1
    log_rows: list[dict] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0


@dataclass
class FoldRun:
    """One fold's training run: what every step reads, and the state a checkpoint saves."""

    spec: ModelParams
    backbone: str
    data: TrainData
    fold: int | None  # None: the full fit
    seed: int  # the fold's seed: the run's seed + fold
    base_seed: int  # the run's seed
    engine: Engine
    model: EssayScorer  # unwrapped, fp32
    collator: EssayCollator  # evaluation batches: whole essays
    train_collator: EssayCollator  # training batches: with token cutout when asked for
    ids: list[list[int]]  # token ids of every row: train essays, then pseudo-labelled ones
    targets: np.ndarray  # (rows,) hard scores, or (rows, 6) soft labels with pseudo rows
    lengths: np.ndarray
    held_out: np.ndarray  # indices of the held-out fold's rows
    accum: int  # micro-batches per optimizer step
    checkpoint: Path
    fingerprint: str
    stop_fraction: float = 1.0  # share of the last stage's steps taken (the full fit: where CV stopped)
    state: RunState = field(default_factory=RunState)
    best_weights: dict | None = None
    swa_models: int = 0  # weights the SWA average holds (0: no SWA)
    started: float = 0.0
    telemetry: Telemetry = field(default_factory=Telemetry)
    logger: StepLogger | None = None
    watch: TrainingWatch = field(default_factory=TrainingWatch)
    profiler: Any = None

    @property
    def label(self) -> str:
        return "full fit" if self.fold is None else f"fold {self.fold}"


@dataclass
class StageRun:
    """One stage of a run: its rows, schedule and optimisation objects."""

    index: int
    rows: np.ndarray
    total_steps: int  # of the schedule
    stop_steps: int  # taken: total_steps, or the full fit's share of the last stage
    eval_every: int
    model: torch.nn.Module  # wrapped for data parallelism
    optimizer: Any
    scheduler: Any
    ema: EMA | None
    awp: AWP | None
    awp_from_step: int
    swa: AveragedModel | None = None  # the last stage's average of weights from swa_from_step on
    swa_from_step: int = 0
    lr_group: int = 0  # the optimizer group whose rate the log's lr is: `lr`'s, the top encoder layer's
    progress: Any = None
    losses: list[float] = field(default_factory=list)


def scorer_config(spec: ModelParams, backbone: str, vocab_size: int) -> ScorerConfig:
    """The EssayScorer's config: `spec`'s scorer settings on `backbone`, with a vocabulary of `vocab_size`."""
    return ScorerConfig(**asdict(spec.scorer), backbone=backbone, vocab_size=vocab_size)


def plan_run(spec: ModelParams, backbone: str, tokenizer, data: TrainData, fold: int | None, checkpoint_dir: Path,
             seed: int, device: str, stop_fraction: float = 1.0) -> FoldRun:
    """Check the fold and settings, seed, build the model and every row's ids and targets."""
    if fold is not None and fold not in set(data.folds.tolist()):
        raise TrainingError(f"fold {fold} is not in folds.parquet (folds: {sorted(set(data.folds.tolist()))})")
    engine = Engine(device, spec.mixed_precision)
    per_step = spec.batch_size * engine.world
    if spec.effective_batch_size % per_step:
        raise TrainingError(
            f"{spec.name}: effective_batch_size={spec.effective_batch_size} is not a multiple of "
            f"batch_size x processes = {spec.batch_size} x {engine.world}; change one of them"
        )
    run_seed = derived_seed(seed, fold if fold is not None else len(np.unique(data.folds)))
    seed_everything(run_seed)
    model = EssayScorer(scorer_config(spec, backbone, len(tokenizer)))
    ids, targets = data.input_ids, data.scores.astype(np.float32)
    labels = fold_pseudo_labels(data.pseudo_labels, fold)
    if spec.uses_pseudo:
        if data.pseudo_ids is None or labels is None:
            raise TrainingError(f"{spec.name}: a stage trains on pseudo-labels but none for fold {fold} were loaded; "
                                f"make them first: python 01_pseudo_label/run.py train.model={spec.name}")
        ids = data.input_ids + data.pseudo_ids
        targets = np.concatenate([soft_targets(data.scores), labels])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fold_fingerprint(spec, backbone, data.source, labels, fold, seed, stop_fraction)
    held_out = np.flatnonzero(data.folds == fold) if fold is not None else np.array([], dtype=np.int64)
    return FoldRun(spec=spec, backbone=backbone, data=data, fold=fold, seed=run_seed, base_seed=seed, engine=engine,
                   model=model,
                   collator=model_collator(tokenizer, TokenSettings.of(spec)),
                   train_collator=model_collator(tokenizer, TokenSettings.of(spec), cutout=spec.token_cutout,
                                                 crop=spec.random_crop),
                   ids=ids, targets=targets,
                   lengths=np.array([len(row) for row in ids]), held_out=held_out,
                   accum=spec.effective_batch_size // per_step, checkpoint=checkpoint_dir / CHECKPOINT_FILE,
                   fingerprint=fingerprint, stop_fraction=stop_fraction)


def restore_run(run: FoldRun) -> dict | None:
    """The checkpoint of an interrupted run of the same fold and settings: its state and weights are taken
    (the stage it stopped in takes its optimizer, schedule and RNG states), or None."""
    resume = read_checkpoint(run.checkpoint, run.fingerprint)
    if resume is not None:
        run.state = RunState(**resume["state"])
        run.model.load_state_dict(resume["model"])
        run.best_weights = resume.get("best_weights")
        log.info("%s %s: resuming at stage %d, epoch %d, step %d", run.spec.name, run.label, run.state.stage,
                 run.state.epoch, run.state.step)
    run.started = time.perf_counter() - run.state.seconds
    run.model = run.model.to(run.engine.device)
    return resume


def setup_stage(run: FoldRun, index: int, stage: StageParams, resume: dict | None) -> StageRun:
    """The stage's rows and schedule, and a fresh optimizer (or the interrupted one's state)."""
    spec, engine, state = run.spec, run.engine, run.state
    rows = stage_rows(run.data, run.fold, stage)
    if set(rows[rows < len(run.data.scores)].tolist()) & set(run.held_out.tolist()):
        raise TrainingError(f"{spec.name} {run.label}: held-out rows selected for training")  # never, by design
    if len(rows) == 0:
        raise TrainingError(f"{spec.name} {run.label}: stage {index + 1} selects no rows ({stage.rows!r} origin)")
    per_epoch = len(epoch_batches(run.lengths, rows, spec.batch_size, run.seed, 0, engine.rank, engine.world,
                                  spec.batch_tokens))
    total_steps = max(1, math.ceil(stage.epochs * per_epoch / run.accum))
    last_stage = index == len(spec.stages) - 1
    stop_steps = max(1, round(total_steps * run.stop_fraction)) if last_stage else total_steps
    model = run.model
    groups = param_groups(model, model.encoder_layers(), model.embeddings_module(), lr=spec.lr, head_lr=spec.head_lr,
                          weight_decay=spec.weight_decay, layerwise_lr_decay=spec.layerwise_lr_decay)
    optimizer = torch.optim.AdamW(groups, lr=spec.lr)
    scheduler = build_scheduler(optimizer, spec.scheduler, total_steps, spec.warmup_ratio)
    ema = EMA(model, spec.ema_decay) if spec.ema_decay > 0 else None
    swa = AveragedModel(model, use_buffers=False) if spec.swa_start > 0 and last_stage else None
    awp = AWP(model, adv_lr=spec.awp_lr, adv_eps=spec.awp_eps) if spec.awp_lr > 0 else None
    wrapped, optimizer = engine.prepare(model, optimizer)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if ema is not None and resume.get("ema") is not None:
            ema.load_state_dict(resume["ema"])
        if swa is not None and resume.get("swa") is not None:
            swa.load_state_dict(resume["swa"])
        engine.load_scaler_state(resume.get("scaler"))
        set_rng_state(resume["rng"])
    else:
        state.stage, state.epoch, state.batch_in_epoch, state.step = index, 0, 0, 0
    return StageRun(index=index, rows=rows, total_steps=total_steps, stop_steps=min(stop_steps, total_steps),
                    eval_every=spec.eval_every or total_steps,
                    model=wrapped, optimizer=optimizer, scheduler=scheduler, ema=ema, awp=awp,
                    awp_from_step=int(spec.awp_start_epoch * per_epoch / run.accum), swa=swa,
                    swa_from_step=int(spec.swa_start * min(stop_steps, total_steps)), lr_group=named_rate_group(groups))
