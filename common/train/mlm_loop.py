"""The training loop of MLM domain adaptation, and the masked-token loss it and the held-out report measure.

A plain loop on the shared engine (`common.train.engine`): AdamW, linear warmup and decay, fp32 weights, autocast
(bf16, or fp16 with a GradScaler) on CUDA only, gradient clipping, length-grouped batches with dynamic padding,
and a checkpoint at each epoch end that resumes a killed run exactly (`train_masked_lm`). `masked_lm_loss` is
the held-out figure: nats per masked token on batches masked once (`common.train.mlm_corpus.fixed_mask_batches`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common.core.devices import autocast_dtype
from common.train.engine import Engine, epoch_batches, read_checkpoint, set_rng_state
from common.train.mlm_corpus import IGNORE_INDEX, MaskingCollator
from common.train.optim import build_scheduler

log = logging.getLogger(__name__)


def _autocast(device: torch.device, mixed_precision: str):
    """Autocast to a resolved training precision (bf16 or fp16) on CUDA; nothing on CPU or with 'no'."""
    dtype = autocast_dtype(mixed_precision, device) if device.type == "cuda" else None
    return torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None else nullcontext()


def _masked_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cross-entropy over the masked tokens, their count), in float32.

    A sum and a count rather than the model's own mean, so that losses are averaged over tokens rather
    than batches, and a batch with nothing masked adds nothing instead of a NaN.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    picked = batch["labels"] != IGNORE_INDEX
    loss_sum = F.cross_entropy(logits[picked].float(), batch["labels"][picked], reduction="sum")
    return loss_sum, picked.sum()


@torch.no_grad()
def masked_lm_loss(model: nn.Module, batches: Sequence[dict], device: torch.device | str = "cpu",
                   mixed_precision: str = "no") -> float:
    """Mean cross-entropy (nats per masked token) of the model on already-masked batches, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for batch in tqdm(batches, desc="mlm eval", unit="batch", leave=False, disable=len(batches) < 20):
            with _autocast(device, mixed_precision):
                loss_sum, n = _masked_token_loss(model, {k: v.to(device) for k, v in batch.items()})
            total += loss_sum.double().cpu()
            count += int(n)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no masked token in the evaluation batches: too few held-out tokens to measure a loss")
    return float(total / count)


@dataclass
class _Progress:
    """Where an MLM run stands (what a checkpoint holds besides tensors)."""

    epoch: int = 0
    step: int = 0
    tokens: int = 0
    masked: int = 0
    seconds: float = 0.0


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],  # biases, norms: no decay
        lr=lr,
    )


def train_masked_lm(model: nn.Module, items: list[dict], collator: MaskingCollator, engine: Engine, *,
                    epochs: float, batch_size: int, lr: float, weight_decay: float, warmup_ratio: float,
                    max_grad_norm: float, seed: int, checkpoint: Path | None = None, fingerprint: str = "") -> dict:
    """The training loop on the shared engine; a checkpoint at each epoch end (when `checkpoint` is given)
    resumes it exactly. Returns steps, masked tokens, tokens seen and seconds."""
    lengths = np.array([len(item["input_ids"]) for item in items])
    rows = np.arange(len(items))
    per_epoch = len(epoch_batches(lengths, rows, batch_size, seed, 0, engine.rank, engine.world))
    total_steps = max(1, math.ceil(epochs * per_epoch))
    optimizer = _optimizer(model, lr, weight_decay)
    scheduler = build_scheduler(optimizer, "linear", total_steps, warmup_ratio)
    state = _Progress()
    resume = read_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    if resume is not None:
        state = _Progress(**resume["state"])
        model.load_state_dict(resume["model"])
        log.info("MLM: resuming at epoch %d, step %d", state.epoch, state.step)
    ddp_model, optimizer = engine.prepare(model, optimizer)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        engine.load_scaler_state(resume["scaler"])
        collator.masker.generator.set_state(resume["masks"])
        set_rng_state(resume["rng"])
    log.info("MLM training: %d chunks, batch %d, %d steps (%.3g epochs), lr %.3g, %s, mixed precision %s, %d "
             "process(es)", len(items), batch_size, total_steps, epochs, lr, engine.device, engine.precision,
             engine.world)
    ddp_model.train()
    started = time.perf_counter() - state.seconds
    with tqdm(total=total_steps, initial=state.step, desc="mlm", unit="step", disable=not engine.is_main) as bar:
        while state.step < total_steps:
            batches = epoch_batches(lengths, rows, batch_size, seed, state.epoch, engine.rank, engine.world)
            loader = torch.utils.data.DataLoader(items, batch_sampler=batches, collate_fn=collator)
            for batch in loader:
                loss, n = _mlm_step(ddp_model, {k: v.to(engine.device) for k, v in batch.items()}, optimizer,
                                    scheduler, engine, max_grad_norm, state.step)
                state.step += 1
                state.tokens += int(batch["attention_mask"].sum()) * engine.world
                state.masked += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if state.step == total_steps:
                    break
            state.epoch += 1
            if checkpoint is not None and state.step < total_steps:
                state.seconds = time.perf_counter() - started
                engine.save_checkpoint(checkpoint, fingerprint, {
                    "state": asdict(state), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": engine.scaler_state(), "masks": collator.masker.generator.get_state()}, state.step)
    return {"steps": state.step, "train_tokens_seen": state.tokens, "train_masked_tokens": state.masked,
            "train_seconds": time.perf_counter() - started}


def _mlm_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer, scheduler, engine: Engine,
              max_grad_norm: float, step: int) -> tuple[float, int]:
    """One optimizer step on one batch: (its loss per masked token, its masked tokens)."""
    with engine.autocast():
        loss_sum, n = _masked_token_loss(model, batch)
    loss = loss_sum / n.clamp(min=1)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"MLM loss is {loss.item()} at step {step}: lower the learning rate or use mixed_precision='bf16' "
            f"or 'no' (now {engine.precision!r})"
        )
    engine.backward(loss)
    engine.step(model, optimizer, scheduler, max_grad_norm)
    return loss.item(), int(n)
