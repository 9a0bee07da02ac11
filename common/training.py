"""The training engine: one model, one fold, out-of-fold predictions. Readable top to bottom.

Why a plain loop on `accelerate` rather than the `transformers` Trainer: the pipeline needs custom heads
and losses (soft labels), two training stages with fresh optimizers, AWP between backward passes, EMA
weights for evaluation, and a resume that reproduces an uninterrupted run bit for bit on CPU. Each of
those is a few lines in a loop and a callback maze in the Trainer. `accelerate` still does what is easy
to get wrong by hand: device placement, DDP under `accelerate launch` / `torchrun`, autocast, and the
fp16 GradScaler (weights and optimizer stay fp32; bf16 needs no scaler).

`train_fold` trains on the rows outside the held-out fold (optionally in two stages: e.g. persuade-origin
rows, then all rows), evaluates on the held-out fold every `eval_every` optimizer steps, checkpoints
every `checkpoint_every` steps, and returns the held-out predictions. A killed run restarts from its
checkpoint: the data order is a function of (seed, stage, epoch) and the RNG states are restored, so
the result equals an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from common.config import ModelParams
from common.folds import folds_fingerprint
from common.io import atomic_write, write_json
from common.metrics import qwk
from common.models import EssayScorer, ScorerConfig
from common.optim import AWP, EMA, build_scheduler, param_groups
from common.pseudo import StudentPseudo
from common.stage import PipelineError
from common.thresholds import round_scores
from common.tokenization import EssayCollator, LengthGroupedSampler, load_tokenizer, tokenize_essays

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


class TrainingError(PipelineError):
    """Training cannot go on (NaN loss, out of memory, a missing fold); the message says what to change."""


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


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 on older GPUs (T4, P100), 'no' on CPU."""
    if device.type != "cuda":
        if requested in ("fp16", "bf16"):
            log.warning("mixed_precision=%s ignored on %s: training in fp32", requested, device.type)
        return "no"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def tokenize_train(spec: ModelParams, backbone: str, folds_frame: pd.DataFrame, texts: list[str],
                   pseudo: StudentPseudo | None = None):
    """Tokenizer of the model and the tokenised essays (one pass, shared by every fold)."""
    tokenizer = load_tokenizer(backbone, add_newline_tokens=spec.add_newline_tokens, padding_side=spec.padding_side)

    def tokenize(batch: list[str]) -> list[list[int]]:
        return tokenize_essays(tokenizer, batch, spec.max_length, add_special_tokens=spec.add_special_tokens,
                               truncation_side=spec.truncation_side)

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
    return ScorerConfig(
        backbone=backbone, head=spec.head, pooling=spec.pooling, regression_loss=spec.regression_loss,
        dropout=spec.dropout, n_dropout_samples=spec.n_dropout_samples, reinit_layers=spec.reinit_layers,
        freeze_embeddings=spec.freeze_embeddings, gradient_checkpointing=spec.gradient_checkpointing,
        lora_r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, vocab_size=vocab_size,
    )


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


def fold_fingerprint(spec: ModelParams, backbone: str, source: str, pseudo_labels: np.ndarray | None, fold: int,
                     seed: int) -> str:
    """What a fold's model depends on: settings, backbone, seed, fold, essays and folds, its pseudo-labels.

    A trained fold whose `train_config.json` holds the same fingerprint is kept; a checkpoint with another
    one is ignored.
    """
    pseudo = ""
    if spec.pseudo_labels != "none" and pseudo_labels is not None:
        # Rounded: fp16 inference on another GPU count or batching may move the last bits, not the labels.
        labels = np.round(np.asarray(pseudo_labels, np.float64), 4)
        pseudo = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    text = json.dumps({"spec": asdict(spec), "backbone": backbone_identity(backbone), "fold": fold, "seed": seed,
                       "data": source, "pseudo": pseudo, "engine": TRAINING_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stage_rows(data: TrainData, fold: int, which: str, with_pseudo: bool = False) -> np.ndarray:
    """Indices of training rows (never the held-out fold) of an origin subset, or of the pseudo rows.

    Pseudo-labelled essays are numbered after the n train essays: n .. n + m - 1. `with_pseudo` adds them
    to a labelled subset (the concat mode).
    """
    n = len(data.scores)
    pseudo = np.arange(n, n + len(data.pseudo_ids or []))
    if which == "pseudo":
        return pseudo
    train = data.folds != fold
    rows = np.flatnonzero(train) if which == "all" else np.flatnonzero(train & (data.origins == which))
    return np.concatenate([rows, pseudo]) if with_pseudo else rows


def _soft_targets(scores: np.ndarray) -> np.ndarray:
    """Hard scores 1..6 as one-hot distributions: every head's loss on them equals its hard-label loss."""
    return np.eye(6, dtype=np.float32)[np.asarray(scores, dtype=np.int64) - 1]


def _batch_loss(head, logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor, weight: float
                ) -> torch.Tensor:
    """Mean loss over the batch, pseudo rows weighted `weight` relative to labelled rows.

    With soft labels the classification and ordinal heads use the KL divergence / cumulative BCE
    against the distribution, the regression head MSE on its expectation (common.models.heads).
    """
    if not bool(pseudo.any()) or bool(pseudo.all()):
        return head.loss(logits, targets)
    n_real, n_pseudo = int((~pseudo).sum()), int(pseudo.sum())
    real_loss = head.loss(logits[~pseudo], targets[~pseudo])
    pseudo_loss = head.loss(logits[pseudo], targets[pseudo])
    return (n_real * real_loss + weight * n_pseudo * pseudo_loss) / (n_real + weight * n_pseudo)


def _epoch_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int,
                   rank: int, world: int) -> list[list[int]]:
    """Length-grouped batches of `rows` for one epoch, this process's share under data parallelism."""
    sampler = LengthGroupedSampler(lengths[rows].tolist(), batch_size=batch_size, seed=seed, shuffle=True)
    sampler.set_epoch(epoch)
    order = [int(rows[i]) for i in sampler]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    usable = len(batches) - len(batches) % world if world > 1 else len(batches)
    return batches[:usable][rank::world]


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), int(numpy_state["pos"]),
                         int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"])))
    random.setstate((state["python"]["version"], tuple(state["python"]["state"].tolist()), None))
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _get_rng() -> dict:
    """Every RNG state as tensors and plain numbers, so `torch.load(weights_only=True)` reads it back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, _ = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64)},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def train_fold(
    spec: ModelParams,
    backbone: str,
    tokenizer,
    data: TrainData,
    fold: int,
    out_dir: Path,
    checkpoint_dir: Path,
    seed: int,
    device: str = "auto",
    stop_after_steps: int | None = None,
) -> FoldResult:
    """Train `spec` on every fold but `fold`, save the model to `out_dir`, return held-out predictions.

    Args:
        spec: the model's parameters (heads, pooling, optimisation, stages...).
        backbone: resolved backbone name or folder.
        tokenizer: the model's tokenizer (saved next to the model).
        data: tokenised train essays with labels, folds and origins.
        fold: the held-out fold.
        out_dir: where the final model, tokenizer and config go (created).
        checkpoint_dir: where resumable checkpoints live while training (removed on success).
        seed: base seed; the fold's seed is seed + fold.
        device: "auto", "cpu" or "cuda".
        stop_after_steps: raise `Interrupted` after this many optimizer steps (tests of resume).
    """
    if fold not in set(data.folds.tolist()):
        raise TrainingError(f"fold {fold} is not in folds.parquet (folds: {sorted(set(data.folds.tolist()))})")
    fold_seed = seed + fold
    on_gpu = device != "cpu" and torch.cuda.is_available()
    mp = resolve_mixed_precision(spec.mixed_precision, torch.device("cuda" if on_gpu else "cpu"))
    AcceleratorState._reset_state()  # models in one process may differ in precision
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision=mp)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = spec.batch_size * world
    if spec.effective_batch_size % per_step:
        raise TrainingError(
            f"{spec.name}: effective_batch_size={spec.effective_batch_size} is not a multiple of "
            f"batch_size x processes = {spec.batch_size} x {world}; change one of them"
        )
    accum = spec.effective_batch_size // per_step

    torch.manual_seed(fold_seed)
    random.seed(fold_seed)
    np.random.seed(fold_seed)
    model = EssayScorer(scorer_config(spec, backbone, len(tokenizer)))
    collator = EssayCollator(tokenizer)
    use_pseudo = spec.pseudo_labels != "none"
    n_real = len(data.scores)
    if use_pseudo and (data.pseudo_ids is None or data.pseudo_labels is None or fold not in data.pseudo_labels):
        raise TrainingError(f"{spec.name}: pseudo_labels={spec.pseudo_labels} but no pseudo-labels for fold {fold} "
                            f"were loaded; make them first: python 01_pseudo_label/run.py train.model={spec.name}")
    all_ids = data.input_ids + (data.pseudo_ids or []) if use_pseudo else data.input_ids
    targets = (np.concatenate([_soft_targets(data.scores), data.pseudo_labels[fold]]) if use_pseudo
               else data.scores.astype(np.float32))
    lengths = np.array([len(ids) for ids in all_ids])
    held_out = np.flatnonzero(data.folds == fold)
    stages = [(spec.stage2_rows, spec.epochs)]
    if spec.stage1_rows != "none":
        stages.insert(0, (spec.stage1_rows, spec.stage1_epochs))
    if spec.pseudo_labels == "two_stage":
        stages.insert(0, ("pseudo", spec.pseudo_epochs))

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE
    fingerprint = fold_fingerprint(spec, backbone, data.source, (data.pseudo_labels or {}).get(fold), fold, seed)
    state, resume = _State(), _read_checkpoint(ckpt_path, fingerprint)
    if resume is not None:
        state = _State(**resume["state"])
        model.load_state_dict(resume["model"])
        log.info("%s fold %d: resuming at stage %d, epoch %d, step %d", spec.name, fold, state.stage, state.epoch,
                 state.step)

    best_weights = resume.get("best_weights") if resume else None
    start_time = time.perf_counter() - state.seconds
    model = model.to(accelerator.device)
    for stage_idx, (which, epochs) in enumerate(stages):
        if stage_idx < state.stage:
            continue
        rows = _stage_rows(data, fold, which, with_pseudo=spec.pseudo_labels == "concat")
        if len(rows) and set(rows[rows < n_real].tolist()) & set(held_out.tolist()):
            raise TrainingError(f"{spec.name} fold {fold}: held-out rows selected for training")  # never, by design
        if len(rows) == 0:
            raise TrainingError(f"{spec.name} fold {fold}: stage {stage_idx + 1} selects no rows ({which!r} origin)")
        batches_per_epoch = len(_epoch_batches(lengths, rows, spec.batch_size, fold_seed, 0, rank, world))
        total_steps = max(1, math.ceil(epochs * batches_per_epoch / accum))
        unwrapped = model
        groups = param_groups(unwrapped, unwrapped.encoder_layers(), unwrapped.embeddings_module(), lr=spec.lr,
                              head_lr=spec.head_lr, weight_decay=spec.weight_decay,
                              layerwise_lr_decay=spec.layerwise_lr_decay)
        optimizer = torch.optim.AdamW(groups, lr=spec.lr)
        scheduler = build_scheduler(optimizer, spec.scheduler, total_steps, spec.warmup_ratio)
        ema = EMA(unwrapped, spec.ema_decay) if spec.ema_decay > 0 else None
        awp = AWP(unwrapped, adv_lr=spec.awp_lr, adv_eps=spec.awp_eps) if spec.awp_lr > 0 else None
        awp_from_step = int(spec.awp_start_epoch * batches_per_epoch / accum)
        ddp_model, optimizer = accelerator.prepare(model, optimizer)
        if resume is not None and stage_idx == state.stage:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if ema is not None and resume.get("ema") is not None:
                ema.load_state_dict(resume["ema"])
            if accelerator.scaler is not None and resume.get("scaler") is not None:
                accelerator.scaler.load_state_dict(resume["scaler"])
            _set_rng(resume["rng"])
        else:
            state.stage, state.epoch, state.batch_in_epoch, state.step = stage_idx, 0, 0, 0
        head = unwrapped.head
        eval_every = spec.eval_every or total_steps  # 0: at the end (and below, at each epoch end)

        progress = tqdm(total=total_steps, initial=state.step, desc=f"{spec.name} fold {fold} stage {stage_idx + 1}",
                        unit="step", disable=not accelerator.is_main_process, leave=False)
        running = []
        while state.step < total_steps:
            batches = _epoch_batches(lengths, rows, spec.batch_size, fold_seed + 1000 * stage_idx, state.epoch,
                                     rank, world)
            ddp_model.train()
            for b_idx in range(state.batch_in_epoch, len(batches)):
                rows_now = batches[b_idx]
                batch = collator([{"input_ids": all_ids[i], "target": targets[i].tolist()} for i in rows_now])
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                is_pseudo = torch.tensor([i >= n_real for i in rows_now], device=accelerator.device)
                final_micro = (b_idx + 1) % accum == 0 or b_idx + 1 == len(batches)
                sync = accelerator.no_sync(ddp_model) if not final_micro else nullcontext()
                try:
                    with sync:
                        with accelerator.autocast():
                            logits = ddp_model(batch["input_ids"], batch["attention_mask"])
                            loss = _batch_loss(head, logits.float(), batch["targets"], is_pseudo, spec.pseudo_weight)
                        if not torch.isfinite(loss):
                            raise TrainingError(
                                f"{spec.name} fold {fold}: loss is {loss.item()} at stage {stage_idx + 1}, step "
                                f"{state.step} (epoch {state.epoch}). Likely causes: fp16 overflow "
                                f"(mixed_precision={mp}: try bf16 or no), a learning rate too high "
                                f"(lr={spec.lr}). The last good checkpoint is kept at {ckpt_path}."
                            )
                        accelerator.backward(loss / accum)
                        if awp is not None and state.step >= awp_from_step:
                            awp.perturb()
                            with accelerator.autocast():
                                adv_logits = ddp_model(batch["input_ids"], batch["attention_mask"])
                                adv_loss = _batch_loss(head, adv_logits.float(), batch["targets"], is_pseudo,
                                                       spec.pseudo_weight)
                            accelerator.backward(adv_loss / accum)
                            awp.restore()
                except torch.cuda.OutOfMemoryError as exc:
                    raise TrainingError(
                        f"{spec.name} fold {fold}: GPU out of memory with batch_size={spec.batch_size}, "
                        f"max_length={spec.max_length}. Lower batch_size (keep effective_batch_size: more "
                        "accumulation), lower max_length, or set gradient_checkpointing: true."
                    ) from exc
                running.append(loss.item())
                state.tokens_seen += int(batch["attention_mask"].sum().item()) * world
                state.batch_in_epoch = b_idx + 1
                if not final_micro:
                    continue
                if spec.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(ddp_model.parameters(), spec.max_grad_norm)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(unwrapped)
                state.step += 1
                state.global_step += 1
                progress.update(1)
                row = {"stage": stage_idx + 1, "epoch": state.epoch, "step": state.global_step,
                       "train_loss": float(np.mean(running)), "lr": scheduler.get_last_lr()[0]}
                running = []
                last = state.step >= total_steps
                if state.step % eval_every == 0 or last:
                    result = _evaluate(unwrapped, ema, collator, data, held_out, accelerator, spec.batch_size * 2)
                    row.update(eval_loss=result["eval_loss"], eval_qwk=result["eval_qwk"])
                    progress.set_postfix(qwk=f"{result['eval_qwk']:.3f}", loss=f"{result['eval_loss']:.3f}")
                    if spec.keep_best and stage_idx == len(stages) - 1 and result["eval_qwk"] > state.best_qwk:
                        state.best_qwk, state.best_step = result["eval_qwk"], state.global_step
                        best_weights = _eval_weights(unwrapped, ema)
                state.log_rows.append(row)
                if spec.checkpoint_every and state.step % spec.checkpoint_every == 0 and not last:
                    state.seconds = time.perf_counter() - start_time
                    _save_checkpoint(ckpt_path, fingerprint, state, unwrapped, optimizer, scheduler, ema,
                                     accelerator, best_weights)
                if stop_after_steps is not None and state.global_step >= stop_after_steps:
                    raise Interrupted(f"stopped after {state.global_step} steps")
                if last:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                if not spec.checkpoint_every:
                    state.seconds = time.perf_counter() - start_time
                    _save_checkpoint(ckpt_path, fingerprint, state, unwrapped, optimizer, scheduler, ema,
                                     accelerator, best_weights)
                continue
            break
        progress.close()
        model = accelerator.unwrap_model(ddp_model)
        if ema is not None and not (spec.keep_best and best_weights is not None):
            model.load_state_dict(_eval_weights(model, ema))  # the EMA weights are the model from here on
        state.stage, state.epoch, state.batch_in_epoch, state.step = stage_idx + 1, 0, 0, 0
        resume = None

    model = accelerator.unwrap_model(model)
    if spec.keep_best and best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    preds, probs, eval_loss = predict_rows(model, collator, data, held_out, accelerator, spec.batch_size * 2)
    oof = pd.DataFrame({"essay_id": data.essay_ids[held_out], "fold": fold, "pred": preds})
    if probs is not None:
        for k in range(probs.shape[1]):
            oof[f"prob_{k + 1}"] = probs[:, k]
    seconds = time.perf_counter() - start_time
    metrics = {
        "fold": fold,
        "qwk_rounded": qwk(data.scores[held_out], round_scores(preds)),
        "eval_loss": eval_loss,
        "n_train_rows": int((data.folds != fold).sum()),
        "n_pseudo_rows": len(data.pseudo_ids or []) if use_pseudo else 0,
        "n_held_out": len(held_out),
        "steps": state.global_step,
        "best_step": state.best_step if spec.keep_best else None,
        "seconds": round(seconds, 1),
        "train_tokens_per_second": round(state.tokens_seen / max(seconds, 1e-9), 1),
        "mixed_precision": mp,
        "processes": world,
    }
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir)
        tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "train_config.json", {"model": asdict(spec), "backbone": backbone, "fold": fold,
                                                   "seed": seed, "fingerprint": fingerprint,
                                                   "folds": data.folds_hash})
        for done in (ckpt_path, ckpt_path.with_suffix(".json")):
            done.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return FoldResult(oof=oof, metrics=metrics, log=pd.DataFrame(state.log_rows))


def _evaluate(model: EssayScorer, ema: EMA | None, collator, data: TrainData, rows: np.ndarray,
              accelerator: Accelerator, batch_size: int) -> dict:
    """Loss and rounded QWK on the held-out rows (with the EMA weights when there are some)."""
    context = ema.apply_to(model) if ema is not None else nullcontext()
    with context:
        preds, _, loss = predict_rows(model, collator, data, rows, accelerator, batch_size)
    return {"eval_loss": loss, "eval_qwk": qwk(data.scores[rows], round_scores(preds))}


def _read_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint to resume from, or None (none, or made with other settings: training starts afresh).

    Its fingerprint is read from the plain-JSON file beside it first, so a checkpoint of other settings is
    never unpickled; a matching one is loaded with `weights_only=True` (tensors and plain values only), so
    a checkpoint.pt copied from elsewhere cannot run code.
    """
    meta = path.with_suffix(".json")
    if not path.exists():
        return None
    saved = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint") if meta.is_file() else None
    if saved != fingerprint:
        log.warning("%s: checkpoint of other settings (or without %s) ignored; the fold trains from scratch", path,
                    meta.name)
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise TrainingError(f"{path} cannot be loaded safely ({str(exc).splitlines()[0]}): it holds more than "
                            "tensors and plain values, or is damaged. Delete it to train the fold from scratch") from None


def _save_checkpoint(path: Path, fingerprint: str, state: _State, model: EssayScorer, optimizer, scheduler,
                     ema: EMA | None, accelerator: Accelerator, best_weights: dict | None) -> None:
    """Everything needed to resume, written atomically (a crash mid-write keeps the previous one)."""
    if not accelerator.is_main_process:
        return
    payload = {
        "fingerprint": fingerprint,
        "state": asdict(state),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "rng": _get_rng(),
        "best_weights": best_weights,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    write_json(path.with_suffix(".json"), {"fingerprint": fingerprint, "step": state.global_step})


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
            logits = model(batch["input_ids"], batch["attention_mask"]).float()
        losses.append(model.head.loss(logits, batch["targets"]).item())
        counts.append(len(idx))
        preds[idx] = model.head.predict(logits).cpu().numpy()
        p = model.head.probs(logits)
        if p is not None:
            if probs is None:
                probs = np.zeros((len(rows), p.shape[1]))
            probs[idx] = p.cpu().numpy()
    model.train(was_training)
    return preds, probs, float(np.average(losses, weights=counts))
