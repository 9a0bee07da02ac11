"""Fine-tuning one model on one fold, out-of-fold predictions. Readable top to bottom.

Why a plain loop on the shared engine (common.train.engine, on `accelerate`) rather than the `transformers`
Trainer: the pipeline needs custom heads and losses (soft labels), training stages with fresh optimizers,
AWP between backward passes, EMA weights for evaluation, and a resume that reproduces an uninterrupted run
bit for bit on CPU. Each of those is a few lines here and a callback maze in the Trainer. The engine does
what is easy to get wrong by hand: device placement, DDP under `accelerate launch` / `torchrun`, autocast,
and the fp16 GradScaler (weights and optimizer stay fp32; bf16 needs no scaler).

`train_fold` reads as its steps: `plan_run` (checks, seed, model, every row's ids and targets), `restore_run`
(the checkpoint of an interrupted run), both in common.train.fold_run with the run's objects; `_train_stage` for
each of the model's `stages` (rows and epochs: e.g. pseudo-labelled essays, then persuade rows, then other rows;
each stage a fresh optimizer and schedule from `setup_stage`), which runs `_train_epoch` -> `_micro_step`
(forward, NaN check, backward, AWP) and `_evaluate_and_log` (held-out loss and QWK every `eval_every` optimizer
steps), and `_finish` (held-out predictions, the saved model). Checkpoints every `checkpoint_every` steps: the
data order is a function of (seed, stage, epoch) and the RNG states are restored, so a resumed run equals an
uninterrupted one. Which rows train is common.train.rows; what a fold's fingerprint hashes, common.train.fingerprints.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from common.config.model_params import ModelParams, StageParams
from common.core.io import write_json
from common.core.tracking import StepLogger
from common.models import EssayScorer
from common.scoring.metrics import qwk
from common.scoring.thresholds import round_scores
from common.train.diagnostics import Profiler, activation_stats, grad_stats, layer_groups
from common.train.engine import (
    TrainingError,
    derived_seed,
    epoch_batches,
    out_of_memory_as,
    remove_checkpoint,
)
from common.train.fingerprints import unit_settings
from common.train.fold_run import FoldRun, StageRun, Telemetry, plan_run, restore_run, setup_stage
from common.train.optim import EMA
from common.train.rows import TrainData, batch_loss

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Raised by `train_fold(stop_after_steps=...)`: simulates a killed run (tests of resume)."""


@dataclass
class FoldResult:
    oof: pd.DataFrame  # essay_id, fold, pred (+ prob_1..prob_6)
    metrics: dict
    log: pd.DataFrame


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
    run = plan_run(spec, backbone, tokenizer, data, fold, checkpoint_dir, seed, device, stop_fraction)
    run.telemetry = telemetry or Telemetry()
    resume = restore_run(run)
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


def _open_telemetry(run: FoldRun) -> None:
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


def _train_stage(run: FoldRun, index: int, stage: StageParams, resume: dict | None, stop_after: int | None) -> None:
    """Epochs of one stage until its step count; the EMA weights (if any) are the model afterwards."""
    spec, state = run.spec, run.state
    st = setup_stage(run, index, stage, resume)
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


def _train_epoch(run: FoldRun, st: StageRun, batches: list[list[int]], stop_after: int | None) -> bool:
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


def _optimizer_step(run: FoldRun, st: StageRun) -> dict[str, float]:
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


def _is_eval_step(st: StageRun, step: int) -> bool:
    """Whether the stage's optimizer step number `step` (from 1) evaluates on the held-out fold."""
    return step % st.eval_every == 0 or step >= st.stop_steps


def _micro_step(run: FoldRun, st: StageRun, rows: list[int], final_micro: bool) -> float:
    """Forward and backward of one micro-batch (and AWP's adversarial pass); returns its loss."""
    spec, engine, n_real = run.spec, run.engine, len(run.data.scores)
    batch = run.train_collator([{"input_ids": run.ids[i], "target": run.targets[i].tolist()} for i in rows])
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    is_pseudo = torch.tensor([i >= n_real for i in rows], device=engine.device)

    def loss_of() -> torch.Tensor:
        with engine.autocast():
            logits = st.model(batch["input_ids"], batch["attention_mask"], batch.get("windows"))
            return batch_loss(run.model.loss, logits.float(), batch["targets"], is_pseudo, spec.pseudo_weight)

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


def _evaluate_and_log(run: FoldRun, st: StageRun, last: bool, stats: dict[str, float]) -> None:
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


def _watch(run: FoldRun, row: dict) -> None:
    """The step's loss and gradient norm to the flat-loss / exploding-gradient watch (an fp16 step the scaler
    skipped has an inf norm by design: not judged)."""
    run.watch.update(int(row["step"]), row["train_loss"], None if "fp16_skipped_step" in row else row.get("grad_norm"))


def _activation_row(run: FoldRun) -> dict[str, float]:
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


def _save_checkpoint(run: FoldRun, st: StageRun) -> None:
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


def _finish(run: FoldRun, tokenizer, out_dir: Path) -> FoldResult:
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
