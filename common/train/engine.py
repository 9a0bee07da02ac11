"""The training engine fine-tuning (common.train.training) and MLM adaptation (common.train.mlm) share.

`Engine` is one run's `accelerate` Accelerator seen through the few operations a loop needs: the device,
the precision and the processes (`accelerate launch` / `torchrun` give several, each a share of the
batches), a forward pass under autocast, a backward pass (scaled under fp16, gradients synchronised only on
the last micro-batch of an accumulation), one optimizer step with clipping, and checkpoints that resume a
run exactly: model, optimizer, scheduler, GradScaler and every RNG state, written atomically beside a
plain-JSON fingerprint so a checkpoint of other settings is never unpickled.

Weights and optimizer state stay fp32; bf16 needs no GradScaler, fp16 gets accelerate's.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from common.core.devices import resolve_device, resolve_mixed_precision
from common.core.errors import PipelineError
from common.core.io import atomic_write, write_json
from common.models.batching import LengthGroupedSampler, batches_by_token_budget

log = logging.getLogger(__name__)


class TrainingError(PipelineError):
    """Training cannot go on (NaN loss, out of memory, a damaged checkpoint); the message says what to change."""


class StepResult(NamedTuple):
    """What an optimizer step did: whether it stepped (fp16 skips inf/NaN steps) and the gradient norm."""

    stepped: bool
    grad_norm: float


class Engine:
    """Device, precision and processes of one training run, and the steps every loop takes."""

    def __init__(self, device: str = "auto", mixed_precision: str = "auto"):
        target = resolve_device(device)
        self.precision = resolve_mixed_precision(mixed_precision, target)
        AcceleratorState._reset_state()  # runs in one process may differ in precision
        self.accelerator = Accelerator(cpu=target.type != "cuda", mixed_precision=self.precision)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The model wrapped for data parallelism (itself in one process) and the optimizer wrapped for the
        GradScaler."""
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def autocast(self):
        """The precision context of forward passes (nothing in fp32)."""
        return self.accelerator.autocast()

    def sync(self, model: nn.Module, now: bool):
        """Around a micro-batch: gradients are all-reduced across processes only when `now` (the last
        micro-batch before an optimizer step)."""
        return nullcontext() if now else self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, model: nn.Module, optimizer, scheduler, max_grad_norm: float,
             inspect: Callable[[], None] | None = None) -> StepResult:
        """Clip (when max_grad_norm > 0), step the optimizer, then the scheduler unless the fp16 GradScaler
        skipped the step (inf/NaN gradients); zero the gradients. Returns whether the optimizer stepped and the
        gradients' total norm before clipping (unscaled under fp16). `inspect` runs on the gradients the optimizer
        is about to use (unscaled, clipped): per-layer statistics."""
        # This optimizer's gradients only: a model trained in stages has had one optimizer per stage prepared,
        # and the accelerator's own unscale / skip flag would take all of them (stage 2 unscaled twice).
        self.accelerator.unscale_gradients(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
        if inspect is not None:
            inspect()
        optimizer.step()
        stepped = not getattr(optimizer, "step_was_skipped", False)
        if stepped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return StepResult(stepped, float(norm))

    def scaler_state(self) -> dict | None:
        return self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None

    def load_scaler_state(self, state: dict | None) -> None:
        if self.accelerator.scaler is not None and state is not None:
            self.accelerator.scaler.load_state_dict(state)

    def wait(self) -> None:
        """Every process reaches this point before any goes on."""
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self, path: Path, fingerprint: str, payload: dict[str, Any], step: int) -> None:
        """`payload` (tensors and plain values) plus the RNG states, written atomically by the main process;
        the fingerprint goes to a JSON file beside it (see `read_checkpoint`)."""
        if not self.is_main:
            return
        with atomic_write(path) as tmp:
            torch.save({**payload, "fingerprint": fingerprint, "rng": rng_state()}, tmp)
        write_json(path.with_suffix(".json"), {"fingerprint": fingerprint, "step": step})


def epoch_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, batch_tokens: int = 0) -> list[list[int]]:
    """Length-grouped batches of `rows` (indices into `lengths`) for one epoch, a function of (seed, epoch);
    under data parallelism this process's share (every process the same number of batches).

    `batch_size` essays each, or with `batch_tokens` > 0 a budget of tokens instead: as many essays of similar
    length as keep essays x longest <= batch_tokens (as inference batches), so short essays come in big batches.
    """
    if batch_tokens > 0:
        batches = _token_budget_batches(lengths, rows, batch_tokens, seed, epoch)
    else:
        sampler = LengthGroupedSampler(lengths[rows].tolist(), batch_size=batch_size, seed=seed, shuffle=True)
        sampler.set_epoch(epoch)
        order = [int(rows[i]) for i in sampler]
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    usable = len(batches) - len(batches) % world if world > 1 else len(batches)
    return batches[:usable][rank::world]


TOKEN_BUDGET_CHUNK = 2048
"""Rows shuffled, then sorted by length within chunks of this many before they are cut by the token budget."""


def _token_budget_batches(lengths: np.ndarray, rows: np.ndarray, batch_tokens: int, seed: int, epoch: int
                          ) -> list[list[int]]:
    rng = np.random.default_rng([seed, epoch])
    shuffled = np.asarray(rows)[rng.permutation(len(rows))]
    batches: list[list[int]] = []
    for start in range(0, len(shuffled), TOKEN_BUDGET_CHUNK):
        chunk = shuffled[start : start + TOKEN_BUDGET_CHUNK]
        batches += [[int(chunk[i]) for i in b] for b in batches_by_token_budget(lengths[chunk], batch_tokens)]
    return [batches[i] for i in rng.permutation(len(batches))]


def read_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint to resume from, or None (none, or made with other settings: the run starts afresh).

    Its fingerprint is read from the plain-JSON file beside it first, so a checkpoint of other settings is
    never unpickled; a matching one is loaded with `weights_only=True` (tensors and plain values only), so a
    checkpoint file copied from elsewhere cannot run code. Resuming restores the RNG states it holds.
    """
    meta = path.with_suffix(".json")
    if not path.exists():
        return None
    saved = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint") if meta.is_file() else None
    if saved != fingerprint:
        log.warning("%s: checkpoint of other settings (or without %s) ignored; training starts from scratch", path,
                    meta.name)
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise TrainingError(f"{path} cannot be loaded safely ({str(exc).splitlines()[0]}): it holds more than "
                            "tensors and plain values, or is damaged. Delete it to train from scratch") from None


def remove_checkpoint(path: Path) -> None:
    for done in (path, path.with_suffix(".json")):
        done.unlink(missing_ok=True)


def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), int(numpy_state["pos"]),
                         int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"])))
    random.setstate((state["python"]["version"], tuple(state["python"]["state"].tolist()), None))
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


SEED_SPACE = 2**32
"""numpy's seeds are 32-bit: every seed derived from a configured one is folded into [0, 2**32)."""


def derived_seed(seed: int, offset: int) -> int:
    """`seed + offset` folded into numpy's seed range (a fold's seed from the run's: seed 4294967295, fold 1 -> 0).
    Seeds that do not overflow are unchanged, so folds trained before keep their seeds."""
    return (seed + offset) % SEED_SPACE


def seed_everything(seed: int) -> None:
    """torch, numpy and Python's RNGs from one seed (CUDA's follow torch's)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@contextmanager
def out_of_memory_as(make_error: Callable[[], Exception]) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into the pipeline error `make_error()` (which says what to lower)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise make_error() from exc
