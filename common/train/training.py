"""Fine-tuning one model on one fold, out-of-fold predictions. Readable top to bottom.

Why a plain loop on the shared engine (common.train.engine, on `accelerate`) rather than the `transformers`
Trainer: the pipeline needs custom heads and losses (soft labels), training stages with fresh optimizers,
AWP between backward passes, EMA weights for evaluation, and a resume that reproduces an uninterrupted run
bit for bit on CPU. Each of those is a few lines here and a callback maze in the Trainer. The engine does
what is easy to get wrong by hand: device placement, DDP under `accelerate launch` / `torchrun`, autocast,
and the fp16 GradScaler (weights and optimizer stay fp32; bf16 needs no scaler).

`train_fold` reads as its steps: `_plan` (checks, seed, model, every row's ids and targets), `_restore` (the
checkpoint of an interrupted run), `_train_stage` for each of the model's `stages` (rows and epochs: e.g.
pseudo-labelled essays, then persuade rows, then other rows; each stage a fresh optimizer and schedule),
which runs `_train_epoch` -> `_micro_step` (forward, NaN check, backward, AWP) and `_evaluate_and_log`
(held-out loss and QWK every `eval_every` optimizer steps), and `_finish` (held-out predictions, the saved
model). Checkpoints every `checkpoint_every` steps: the data order is a function of (seed, stage, epoch)
and the RNG states are restored, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from common.config.model_params import ModelParams, StageParams
from common.core.io import write_json
from common.core.tracking import StepLogger
from common.models import EssayScorer, ScorerConfig
from common.models.tokenization import (
    EssayCollator,
    load_tokenizer,
    model_collator,
    model_token_ids,
    token_settings,
)
from common.prepare.folds import folds_fingerprint
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores
from common.train.diagnostics import Profiler, TrainingWatch, activation_stats, grad_stats, layer_groups
from common.train.engine import (
    Engine,
    TrainingError,
    derived_seed,
    epoch_batches,
    out_of_memory_as,
    read_checkpoint,
    remove_checkpoint,
    seed_everything,
    set_rng_state,
)
from common.train.optim import AWP, EMA, build_scheduler, named_rate_group, param_groups
from common.train.pseudo import StudentPseudo

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


class Interrupted(RuntimeError):
    """Raised by `train_fold(stop_after_steps=...)`: simulates a killed run (tests of resume)."""


@dataclass
class TrainData:
    """Train essays, already tokenised for one model, with labels, folds and origins (n rows)."""

    essay_ids: np.ndarray
    input_ids: list[list[int]]
    scores: np.ndarray  # (n,) int 1..6
    folds: np.ndarray  # (n,) int
    origins: np.ndarray  # (n,) "persuade" / "other"
    # Pseudo-labelled external essays (students only): token ids (m rows) and soft labels per fold.
    pseudo_ids: list[list[int]] | None = None
    pseudo_labels: dict[int, np.ndarray] | None = None  # fold -> (m, 6), from a teacher that never saw it
    source: str = ""  # fingerprint of the folds table and essay texts the rows come from (`data_fingerprint`)
    folds_hash: str = ""  # fingerprint of the folds table alone (`folds_fingerprint`)


@dataclass
class FoldResult:
    oof: pd.DataFrame  # essay_id, fold, pred (+ prob_1..prob_6)
    metrics: dict
    log: pd.DataFrame


@dataclass
class _State:
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


def tokenize_train(spec: ModelParams, backbone: str, folds_frame: pd.DataFrame, texts: list[str],
                   pseudo: StudentPseudo | None = None):
    """Tokenizer of the model and the tokenised essays (one pass, shared by every fold)."""
    tokenizer = load_tokenizer(backbone, add_newline_tokens=spec.add_newline_tokens, padding_side=spec.padding_side)

    settings = token_settings(asdict(spec))

    def tokenize(batch: list[str]) -> list[list[int]]:
        return model_token_ids(tokenizer, batch, settings)

    input_ids = tokenize(texts)
    data = TrainData(
        essay_ids=folds_frame["essay_id"].to_numpy(),
        input_ids=input_ids,
        scores=folds_frame["score"].to_numpy(),
        folds=folds_frame["fold"].to_numpy(),
        origins=folds_frame["origin"].to_numpy(),
        pseudo_ids=tokenize(pseudo.texts) if pseudo is not None else None,
        pseudo_labels=pseudo.labels if pseudo is not None else None,
        source=data_fingerprint(folds_frame, texts, pseudo.texts if pseudo is not None else ()),
        folds_hash=folds_fingerprint(folds_frame),
    )
    return tokenizer, data


def scorer_config(spec: ModelParams, backbone: str, vocab_size: int) -> ScorerConfig:
    return ScorerConfig(**asdict(spec.scorer), backbone=backbone, vocab_size=vocab_size)


def data_fingerprint(folds_frame: pd.DataFrame, texts: Sequence[str], pseudo_texts: Sequence[str] = ()) -> str:
    """Hash of the folds table and every essay text (train, then pseudo-labelled) a model trains on."""
    digest = hashlib.sha256(folds_fingerprint(folds_frame).encode())
    add_texts(digest, [*texts, "\0pseudo", *pseudo_texts])
    return digest.hexdigest()[:16]


def add_texts(digest, texts: Sequence[str]) -> None:
    """Feed every text, in order and each one delimited, into a hashlib digest."""
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")


TRAINING_VERSION = 1
"""Part of every fold's fingerprint: raise it with a change to training or model code that changes what a
fold trains to, so folds trained before it are trained again (a refactor leaves it, and the folds are kept)."""


def backbone_identity(backbone: str) -> str:
    """The backbone as the fingerprint sees it: an MLM-adapted one by its own fingerprint, not by the folder
    it sits in (moving paths.output must not retrain anything); any other by its name or path."""
    path = Path(backbone)
    if path.name == "backbone" and path.parent.parent.name == "mlm":
        return f"mlm:{path.parent.name}"
    return backbone


UNIT_INDEPENDENT = ("seeds", "full_fit")
"""Model settings that choose which units train, not what one trains to: left out of the fingerprint, so
adding a seed or a full fit keeps every trained fold."""

NEUTRAL_AT_DEFAULT = ("windows", "window_overlap", "random_crop", "max_length_schedule", "swa_start", "batch_tokens",
                      "kind", "tfidf")
"""Settings added after folds were first fingerprinted, whose default trains exactly what training did before
they existed: at their default they are left out of the fingerprint and of train_config.json, so a pipeline
upgrade that adds such a setting keeps the folds trained before it (no GPU hours spent again). A new setting
whose default is "off" goes here; one that changes training at its default raises TRAINING_VERSION instead."""


def unit_settings(spec: ModelParams) -> dict:
    """What a trained fold records of its model's settings (and what its fingerprint hashes): every setting but
    UNIT_INDEPENDENT ones and NEUTRAL_AT_DEFAULT ones left at their defaults."""
    defaults = asdict(ModelParams())
    return {k: v for k, v in asdict(spec).items()
            if k not in UNIT_INDEPENDENT and not (k in NEUTRAL_AT_DEFAULT and v == defaults[k])}


def fold_fingerprint(spec: ModelParams, backbone: str, source: str, pseudo_labels: np.ndarray | None,
                     fold: int | None, seed: int, stop_fraction: float | None = None) -> str:
    """What a fold's model depends on: settings, backbone, seed, fold, essays and folds, its pseudo-labels
    (the full fit, fold None: also where CV stopped, `stop_fraction`).

    A trained fold whose `train_config.json` holds the same fingerprint is kept; a checkpoint with another
    one is ignored.
    """
    pseudo = ""
    if spec.uses_pseudo and pseudo_labels is not None:
        # Rounded: fp16 inference on another GPU count or batching may move the last bits, not the labels.
        labels = np.round(np.asarray(pseudo_labels, np.float64), 4)
        pseudo = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    payload = {"spec": unit_settings(spec), "backbone": backbone_identity(backbone), "fold": fold, "seed": seed,
               "data": source, "pseudo": pseudo, "engine": TRAINING_VERSION}
    if fold is None:
        payload["stop"] = round(float(stop_fraction if stop_fraction is not None else 1.0), 4)
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fold_pseudo_labels(labels: dict[int, np.ndarray] | None, fold: int | None) -> np.ndarray | None:
    """The soft labels a fold trains on (from a teacher that never saw it); the full fit (fold None), which is
    never evaluated, takes their mean over the folds."""
    if not labels:
        return None
    if fold is None:
        return np.mean([labels[k] for k in sorted(labels)], axis=0)
    return labels.get(fold)


def _stage_rows(data: TrainData, fold: int | None, stage: StageParams) -> np.ndarray:
    """Indices of a stage's training rows (never the held-out fold; every labelled row for the full fit, fold
    None): an origin subset, and / or the pseudo rows.

    Pseudo-labelled essays are numbered after the n train essays: n .. n + m - 1.
    """
    n = len(data.scores)
    pseudo = np.arange(n, n + len(data.pseudo_ids or []))
    if stage.rows == "pseudo":
        return pseudo
    train = data.folds != fold if fold is not None else np.ones(n, dtype=bool)
    rows = np.flatnonzero(train) if stage.rows == "all" else np.flatnonzero(train & (data.origins == stage.rows))
    return np.concatenate([rows, pseudo]) if stage.with_pseudo else rows


def _soft_targets(scores: np.ndarray) -> np.ndarray:
    """Hard scores 1..6 as one-hot distributions: every head's loss on them equals its hard-label loss."""
    return np.eye(6, dtype=np.float32)[np.asarray(scores, dtype=np.int64) - 1]


def _batch_loss(loss_fn, logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor, weight: float
                ) -> torch.Tensor:
    """Mean loss over the batch, pseudo rows weighted `weight` relative to labelled rows.

    With soft labels the classification and ordinal heads use the KL divergence / cumulative BCE
    against the distribution, the regression head MSE on its expectation (common.models.parts.losses).
    """
    if not bool(pseudo.any()) or bool(pseudo.all()):
        return loss_fn(logits, targets)
    n_real, n_pseudo = int((~pseudo).sum()), int(pseudo.sum())
    real_loss = loss_fn(logits[~pseudo], targets[~pseudo])
    pseudo_loss = loss_fn(logits[pseudo], targets[pseudo])
    return (n_real * real_loss + weight * n_pseudo * pseudo_loss) / (n_real + weight * n_pseudo)


@dataclass
class Telemetry:
    """What a run reports beside its log rows (all off by default: tests, and ranks other than 0)."""

    live_dir: Path | None = None  # the unit's dvclive folder (None: no dvclive)
    run_name: str = ""  # the unit's name in trackers, e.g. "deberta-v3-large/fold_0"
    trackers: Sequence[str] = ()  # wandb / mlflow beside dvclive
    layer_stats: bool = False  # gradient and activation statistics per layer group at eval steps
    profile_steps: int = 0  # torch.profiler over this many optimizer steps (0: off)
    profile_dir: Path | None = None  # where the profiler's trace.json and profile.txt go


STEP_TIMINGS = ("tokens_per_second", "peak_gpu_mem_mb")
"""Columns of a step's log row that change from run to run: logged (dvclive), left out of the fold's
log.csv (dvc.lock hashes it)."""


def train_fold(spec: ModelParams, backbone: str, tokenizer, data: TrainData, fold: int | None, out_dir: Path,
               checkpoint_dir: Path, seed: int, device: str = "auto", stop_after_steps: int | None = None,
               stop_fraction: float = 1.0, telemetry: Telemetry | None = None) -> FoldResult:
    """Train `spec` on every fold but `fold`, save the model to `out_dir`, return held-out predictions.

    `fold` None is the full fit: every labelled row, nothing held out (no evaluation, an empty OOF frame), its
    last stage stopped after `stop_fraction` of its steps (where CV chose to stop; the schedule is the whole
    stage's, as in the folds).

    Args:
        spec: the model's parameters (scorer, stages, optimisation...).
        backbone: resolved backbone name or folder.
        tokenizer: the model's tokenizer (saved next to the model).
        data: tokenised train essays with labels, folds and origins.
        fold: the held-out fold (None: the full fit).
        out_dir: where the final model, tokenizer and config go (created).
        checkpoint_dir: where resumable checkpoints live while training (removed on success).
        seed: base seed; the fold's seed is seed + fold (the full fit's: seed + the number of folds),
            modulo 2**32 (`engine.derived_seed`).
        device: "auto", "cpu" or "cuda".
        stop_after_steps: raise `Interrupted` after this many optimizer steps (tests of resume).
        telemetry: where the step logs go beside the returned log (dvclive, trackers), layer statistics and
            the profiler; default: none of them.
    """
    run = _plan(spec, backbone, tokenizer, data, fold, checkpoint_dir, seed, device, stop_fraction)
    run.telemetry = telemetry or Telemetry()
    resume = _restore(run)
    _open_telemetry(run)
    try:
        with run.profiler:
            for index, stage in enumerate(spec.stages):
                if index >= run.state.stage:
                    _train_stage(run, index, stage, resume if index == run.state.stage else None, stop_after_steps)
                    resume = None
    finally:
        if run.logger is not None:
            run.logger.close()
    return _finish(run, tokenizer, out_dir)


def _open_telemetry(run: _Run) -> None:
    """The step logger (replaying the rows of an interrupted run), the loss / gradient watch, the profiler."""
    tel = run.telemetry
    if tel.live_dir is not None and run.engine.is_main:
        run.logger = StepLogger(tel.live_dir, tel.run_name or f"{run.spec.name}/{run.label}",
                                config=unit_settings(run.spec), trackers=tel.trackers)
        run.logger.replay(run.state.log_rows)
    for row in run.state.log_rows:
        _watch(run, row)
    run.profiler = Profiler(tel.profile_dir or run.checkpoint.parent / "profile",
                            tel.profile_steps if run.engine.is_main else 0)


@dataclass
class _Run:
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
    state: _State = field(default_factory=_State)
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
class _Stage:
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


def _plan(spec: ModelParams, backbone: str, tokenizer, data: TrainData, fold: int | None, checkpoint_dir: Path,
          seed: int, device: str, stop_fraction: float = 1.0) -> _Run:
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
        targets = np.concatenate([_soft_targets(data.scores), labels])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fold_fingerprint(spec, backbone, data.source, labels, fold, seed, stop_fraction)
    held_out = np.flatnonzero(data.folds == fold) if fold is not None else np.array([], dtype=np.int64)
    return _Run(spec=spec, backbone=backbone, data=data, fold=fold, seed=run_seed, base_seed=seed, engine=engine,
                model=model,
                collator=model_collator(tokenizer, token_settings(asdict(spec))),
                train_collator=model_collator(tokenizer, token_settings(asdict(spec)), cutout=spec.token_cutout,
                                              crop=spec.random_crop),
                ids=ids, targets=targets,
                lengths=np.array([len(row) for row in ids]), held_out=held_out,
                accum=spec.effective_batch_size // per_step, checkpoint=checkpoint_dir / CHECKPOINT_FILE,
                fingerprint=fingerprint, stop_fraction=stop_fraction)


def _restore(run: _Run) -> dict | None:
    """The checkpoint of an interrupted run of the same fold and settings: its state and weights are taken
    (the stage it stopped in takes its optimizer, schedule and RNG states), or None."""
    resume = read_checkpoint(run.checkpoint, run.fingerprint)
    if resume is not None:
        run.state = _State(**resume["state"])
        run.model.load_state_dict(resume["model"])
        run.best_weights = resume.get("best_weights")
        log.info("%s %s: resuming at stage %d, epoch %d, step %d", run.spec.name, run.label, run.state.stage,
                 run.state.epoch, run.state.step)
    run.started = time.perf_counter() - run.state.seconds
    run.model = run.model.to(run.engine.device)
    return resume


def _stage_setup(run: _Run, index: int, stage: StageParams, resume: dict | None) -> _Stage:
    """The stage's rows and schedule, and a fresh optimizer (or the interrupted one's state)."""
    spec, engine, state = run.spec, run.engine, run.state
    rows = _stage_rows(run.data, run.fold, stage)
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
    return _Stage(index=index, rows=rows, total_steps=total_steps, stop_steps=min(stop_steps, total_steps),
                  eval_every=spec.eval_every or total_steps,
                  model=wrapped, optimizer=optimizer, scheduler=scheduler, ema=ema, awp=awp,
                  awp_from_step=int(spec.awp_start_epoch * per_epoch / run.accum), swa=swa,
                  swa_from_step=int(spec.swa_start * min(stop_steps, total_steps)), lr_group=named_rate_group(groups))


def _train_stage(run: _Run, index: int, stage: StageParams, resume: dict | None, stop_after: int | None) -> None:
    """Epochs of one stage until its step count; the EMA weights (if any) are the model afterwards."""
    spec, state = run.spec, run.state
    st = _stage_setup(run, index, stage, resume)
    st.progress = tqdm(total=st.stop_steps, initial=state.step, desc=f"{spec.name} {run.label} stage {index + 1}",
                       unit="step", disable=not run.engine.is_main, leave=False)
    while state.step < st.stop_steps:
        batches = epoch_batches(run.lengths, st.rows, spec.batch_size, derived_seed(run.seed, 1000 * index),
                                state.epoch, run.engine.rank, run.engine.world, spec.batch_tokens)
        st.model.train()
        if spec.max_length_schedule:
            run.train_collator.max_tokens = spec.max_length_schedule[min(state.epoch, len(spec.max_length_schedule) - 1)]
        if _train_epoch(run, st, batches, stop_after):
            break
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if not spec.checkpoint_every:
            _save_checkpoint(run, st)
    st.progress.close()
    run.model = run.engine.unwrap(st.model)
    if st.ema is not None and not (spec.keep_best and run.best_weights is not None):
        run.model.load_state_dict(_eval_weights(run.model, st.ema))  # the EMA weights are the model from here on
    state.stage, state.epoch, state.batch_in_epoch, state.step = index + 1, 0, 0, 0


def _train_epoch(run: _Run, st: _Stage, batches: list[list[int]], stop_after: int | None) -> bool:
    """The rest of one epoch's micro-batches; True once the stage's last optimizer step is taken."""
    state = run.state
    started, tokens_before = time.perf_counter(), state.tokens_seen
    for b_idx in range(state.batch_in_epoch, len(batches)):
        final_micro = (b_idx + 1) % run.accum == 0 or b_idx + 1 == len(batches)
        st.losses.append(_micro_step(run, st, batches[b_idx], final_micro))
        state.batch_in_epoch = b_idx + 1
        if not final_micro:
            continue
        stats = _optimizer_step(run, st)
        stats["tokens_per_second"] = (state.tokens_seen - tokens_before) / max(time.perf_counter() - started, 1e-9)
        if st.ema is not None:
            st.ema.update(run.model)
        state.step += 1
        state.global_step += 1
        st.progress.update(1)
        if st.swa is not None and state.step > st.swa_from_step:
            st.swa.update_parameters(run.model)
        last = state.step >= st.stop_steps
        if last and st.swa is not None:  # the average is the model from here on: evaluated, kept, saved
            run.model.load_state_dict(st.swa.module.state_dict())
            run.swa_models = int(st.swa.n_averaged.item())
        _evaluate_and_log(run, st, last, stats)
        run.profiler.step()
        if run.spec.checkpoint_every and state.step % run.spec.checkpoint_every == 0 and not last:
            _save_checkpoint(run, st)
        if stop_after is not None and state.global_step >= stop_after:
            raise Interrupted(f"stopped after {state.global_step} steps")
        if last:
            return True
        started, tokens_before = time.perf_counter(), state.tokens_seen
    return False


def _optimizer_step(run: _Run, st: _Stage) -> dict[str, float]:
    """Clip, step, schedule; returns the step's gradient norm (before clipping), the per-layer-group norms at
    eval steps when asked for, and the peak GPU memory so far."""
    stats: dict[str, float] = {}

    def layer_norms() -> None:
        stats.update(grad_stats(layer_groups(run.model)))

    inspect = layer_norms if run.telemetry.layer_stats and _is_eval_step(st, run.state.step + 1) else None
    result = run.engine.step(st.model, st.optimizer, st.scheduler, run.spec.max_grad_norm, inspect)
    stats["grad_norm"] = result.grad_norm
    if not result.stepped:  # the fp16 scaler met inf/NaN gradients and lowers its scale: routine, not a blow-up
        stats["fp16_skipped_step"] = 1.0
    if run.engine.device.type == "cuda":
        stats["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(run.engine.device) / 2**20
    return stats


def _is_eval_step(st: _Stage, step: int) -> bool:
    """Whether the stage's optimizer step number `step` (from 1) evaluates on the held-out fold."""
    return step % st.eval_every == 0 or step >= st.stop_steps


def _micro_step(run: _Run, st: _Stage, rows: list[int], final_micro: bool) -> float:
    """Forward and backward of one micro-batch (and AWP's adversarial pass); returns its loss."""
    spec, engine, n_real = run.spec, run.engine, len(run.data.scores)
    batch = run.train_collator([{"input_ids": run.ids[i], "target": run.targets[i].tolist()} for i in rows])
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    is_pseudo = torch.tensor([i >= n_real for i in rows], device=engine.device)

    def loss_of() -> torch.Tensor:
        with engine.autocast():
            logits = st.model(batch["input_ids"], batch["attention_mask"], batch.get("windows"))
            return _batch_loss(run.model.loss, logits.float(), batch["targets"], is_pseudo, spec.pseudo_weight)

    with out_of_memory_as(lambda: TrainingError(
            f"{spec.name} {run.label}: GPU out of memory with batch_size={spec.batch_size}, max_length="
            f"{spec.max_length}. Lower batch_size (keep effective_batch_size: more accumulation), lower "
            "max_length, or set scorer.gradient_checkpointing: true.")), engine.sync(st.model, final_micro):
        loss = loss_of()
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{spec.name} {run.label}: loss is {loss.item()} at stage {st.index + 1}, step {run.state.step} "
                f"(epoch {run.state.epoch}). Likely causes: fp16 overflow (mixed_precision={engine.precision}: try "
                f"bf16 or no), a learning rate too high (lr={spec.lr}). The last good checkpoint is kept at "
                f"{run.checkpoint}.")
        engine.backward(loss / run.accum)
        if st.awp is not None and run.state.step >= st.awp_from_step:
            st.awp.perturb()
            engine.backward(loss_of() / run.accum)
            st.awp.restore()
    run.state.tokens_seen += int(batch["attention_mask"].sum().item()) * engine.world
    return loss.item()


def _evaluate_and_log(run: _Run, st: _Stage, last: bool, stats: dict[str, float]) -> None:
    """A log row per optimizer step (with `stats`: gradient norm, speed); held-out loss and QWK every
    eval_every steps and at the stage's end (the best of the last stage kept with keep_best), with layer
    statistics when asked for. The row goes to the run's log, its step logger and the loss / gradient watch."""
    state, spec = run.state, run.spec
    row = {"stage": st.index + 1, "epoch": state.epoch, "step": state.global_step,
           "train_loss": float(np.mean(st.losses)), "lr": st.scheduler.get_last_lr()[st.lr_group], **stats}
    st.losses.clear()
    _watch(run, row)
    if len(run.held_out) and (state.step % st.eval_every == 0 or last):
        result = _evaluate(run.model, st.ema, run.collator, run.data, run.held_out, run.engine.accelerator,
                           spec.batch_size * 2)
        row.update(eval_loss=result["eval_loss"], eval_qwk=result["eval_qwk"])
        st.progress.set_postfix(qwk=f"{result['eval_qwk']:.3f}", loss=f"{result['eval_loss']:.3f}")
        final_stage = st.index == len(spec.stages) - 1
        if spec.keep_best and final_stage and result["eval_qwk"] > state.best_qwk:
            state.best_qwk, state.best_step = result["eval_qwk"], state.global_step
            run.best_weights = _eval_weights(run.model, st.ema)
        if run.telemetry.layer_stats:
            row.update(_activation_row(run))
    state.log_rows.append(row)
    if run.logger is not None:
        run.logger.log(row)


def _watch(run: _Run, row: dict) -> None:
    """The step's loss and gradient norm to the flat-loss / exploding-gradient watch (an fp16 step the scaler
    skipped has an inf norm by design: not judged)."""
    run.watch.update(int(row["step"]), row["train_loss"], None if "fp16_skipped_step" in row else row.get("grad_norm"))


def _activation_row(run: _Run) -> dict[str, float]:
    """Mean and spread of each layer group's output on the first held-out batch (eval mode, no gradients,
    no random numbers drawn: training goes on unchanged)."""
    model, rows = run.model, run.held_out[: run.spec.batch_size]
    batch = run.collator([{"input_ids": run.data.input_ids[i], "target": float(run.data.scores[i])} for i in rows])
    batch = {k: v.to(run.engine.device) for k, v in batch.items()}
    layers = list(model.encoder_layers())
    modules = {"embeddings": model.embeddings_module(), "head": model.head}
    for name in layer_groups(model):
        if name.startswith("layers_"):  # a group's output is its last layer's
            modules[name] = layers[int(name.split("-")[-1])]
    with run.engine.autocast():  # activation_stats runs the model in eval mode and restores its mode
        return activation_stats(model, lambda: model(batch["input_ids"], batch["attention_mask"],
                                                     batch.get("windows")), modules)


def _save_checkpoint(run: _Run, st: _Stage) -> None:
    """Everything needed to resume, written atomically (a crash mid-write keeps the previous one)."""
    run.state.seconds = time.perf_counter() - run.started
    run.engine.save_checkpoint(run.checkpoint, run.fingerprint, {
        "state": asdict(run.state),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "ema": st.ema.state_dict() if st.ema is not None else None,
        "swa": st.swa.state_dict() if st.swa is not None else None,
        "scaler": run.engine.scaler_state(),
        "best_weights": run.best_weights,
    }, run.state.global_step)


def _finish(run: _Run, tokenizer, out_dir: Path) -> FoldResult:
    """Held-out predictions of the final (or best) weights; the model saved by the main process."""
    spec, data, state, engine = run.spec, run.data, run.state, run.engine
    model = engine.unwrap(run.model)
    if spec.keep_best and run.best_weights is not None:
        model.load_state_dict(run.best_weights)
    model.eval()
    preds, probs, eval_loss = np.zeros(0), None, None
    if len(run.held_out):
        preds, probs, eval_loss = predict_rows(model, run.collator, data, run.held_out, engine.accelerator,
                                               spec.batch_size * 2)
    oof = pd.DataFrame({"essay_id": data.essay_ids[run.held_out], "fold": run.fold if run.fold is not None else -1,
                        "pred": preds})
    if probs is not None:
        for k in range(probs.shape[1]):
            oof[f"prob_{k + 1}"] = probs[:, k]
    seconds = time.perf_counter() - run.started
    metrics = {
        "fold": run.fold,
        "qwk_rounded": qwk(data.scores[run.held_out], round_scores(preds)) if len(run.held_out) else None,
        "eval_loss": eval_loss,
        "n_train_rows": len(data.scores) - len(run.held_out),
        "n_pseudo_rows": len(data.pseudo_ids or []) if spec.uses_pseudo else 0,
        "n_held_out": len(run.held_out),
        "steps": state.global_step,
        "best_step": state.best_step if spec.keep_best and len(run.held_out) else None,
        "seconds": round(seconds, 1),
        "train_tokens_per_second": round(state.tokens_seen / max(seconds, 1e-9), 1),
        "mixed_precision": engine.precision,
        "processes": engine.world,
    }
    if run.fold is None:
        metrics["stop_fraction"] = run.stop_fraction
    if spec.swa_start > 0:
        metrics["swa_models"] = run.swa_models
    if engine.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir)
        if getattr(tokenizer, "backend_tokenizer", None) is not None:  # tokenize_essays truncates per call: the
            tokenizer.backend_tokenizer.no_truncation()  # saved file holds no call's state, whatever ran last
        tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "train_config.json", {"model": unit_settings(spec), "backbone": run.backbone,
                                                   "fold": run.fold, "seed": run.base_seed,
                                                   "fingerprint": run.fingerprint, "folds": data.folds_hash})
        remove_checkpoint(run.checkpoint)
    engine.wait()
    return FoldResult(oof=oof, metrics=metrics, log=pd.DataFrame(state.log_rows))


def _evaluate(model: EssayScorer, ema: EMA | None, collator, data: TrainData, rows: np.ndarray,
              accelerator: Accelerator, batch_size: int) -> dict:
    """Loss and rounded QWK on the held-out rows (with the EMA weights when there are some)."""
    context = ema.apply_to(model) if ema is not None else nullcontext()
    with context:
        preds, _, loss = predict_rows(model, collator, data, rows, accelerator, batch_size)
    return {"eval_loss": loss, "eval_qwk": qwk(data.scores[rows], round_scores(preds))}


def _eval_weights(model: EssayScorer, ema: EMA | None) -> dict:
    context = ema.apply_to(model) if ema is not None else nullcontext()
    with context:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.inference_mode()
def predict_rows(model: EssayScorer, collator, data: TrainData, rows: np.ndarray, accelerator: Accelerator,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Continuous predictions, class probabilities (or None) and mean loss for `rows`, in `rows` order."""
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    lengths = np.array([len(data.input_ids[i]) for i in rows])
    order = np.argsort(-lengths, kind="stable")
    preds = np.zeros(len(rows))
    probs = None
    losses, counts = [], []
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        batch = collator([{"input_ids": data.input_ids[rows[i]], "target": float(data.scores[rows[i]])} for i in idx])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"], batch.get("windows")).float()
        losses.append(model.loss(logits, batch["targets"]).item())
        counts.append(len(idx))
        preds[idx] = model.head.predict(logits).cpu().numpy()
        p = model.head.probs(logits)
        if p is not None:
            if probs is None:
                probs = np.zeros((len(rows), p.shape[1]))
            probs[idx] = p.cpu().numpy()
    model.train(was_training)
    return preds, probs, float(np.average(losses, weights=counts))
