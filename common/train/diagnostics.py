"""Training diagnostics: LR range test, profiler, per-layer-group statistics, loss/gradient watch.

- `lr_range_test` (Smith 2017, "Cyclical learning rates", as fastai's `lr_find` runs it): one optimizer step per
  learning rate on a geometric grid, the loss smoothed, stopped once it diverges; `suggested_lr` is where the
  smoothed loss falls fastest. `plot_lr_range` draws the curve.
- `Profiler`: torch.profiler over a few optimizer steps, written as a Chrome trace and a table of the top ops.
- `layer_groups`, `grad_stats`, `activation_stats`: gradient norms and activation mean / std per layer group,
  keyed as dvclive metric names ("layer_grad_norm/head", "act_mean/layers_0-5"; not "grad_norm/...": the
  total gradient norm is a metric of that name).
- `TrainingWatch`: warns when the training loss goes flat or the gradient norm explodes.

Nothing here changes training: the caller decides when to call each piece and what to do with the numbers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.core.io import atomic_write

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- LR range test


@dataclass
class LRRangeResult:
    """What `lr_range_test` saw, one entry per step it ran (fewer than `steps` when it stopped early).

    lrs: the learning rates tried, increasing. losses: the raw loss `step(lr)` returned at each.
    smoothed: the bias-corrected exponential moving average of the losses.
    suggested_lr: a tenth of the lr at the smoothed loss's minimum (see `suggest_lr`); None when it never falls.
    steepest_lr: the lr where the smoothed loss falls fastest (`steepest_lr`): on a noisy curve (small batches)
        a chance dip among the first rates can be steepest, which is why it is not the suggestion.
    diverged: whether the test stopped early because the loss diverged (else it reached lr_max: a larger lr_max
    would show where the loss blows up).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float | None
    diverged: bool
    steepest_lr: float | None = None

    def to_frame(self) -> pd.DataFrame:
        """Columns lr, loss, smoothed_loss; one row per step."""
        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed_loss": self.smoothed})


def lr_range_test(step: Callable[[float], float], lr_min: float = 1e-7, lr_max: float = 1.0, steps: int = 100,
                  smoothing: float = 0.98, diverge_factor: float = 4.0) -> LRRangeResult:
    """Run `step` at `steps` learning rates from `lr_min` to `lr_max` (geometric), stopping when the loss diverges.

    Args:
        step: sets every parameter group's lr to the given lr (scaled per group by the caller, e.g. for
            layer-wise decay), runs one optimizer step on the next batch and returns that batch's loss. The test
            trains the model: save its weights and the optimizer state before and restore them after.
        lr_min, lr_max: the first and last learning rates, 0 < lr_min < lr_max.
        steps: number of learning rates (and optimizer steps), >= 2.
        smoothing: beta of the moving average, avg = beta * avg + (1 - beta) * loss, divided by 1 - beta^(i+1)
            (bias correction: the first average is the first loss, not (1 - beta) of it); in [0, 1).
        diverge_factor: stop once the smoothed loss exceeds this many times the best smoothed loss so far, > 1.
            A non-finite loss stops the test at once.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"lr_range_test needs 0 < lr_min < lr_max, got lr_min={lr_min}, lr_max={lr_max}")
    if steps < 2:
        raise ValueError(f"lr_range_test needs steps >= 2, got {steps}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if diverge_factor <= 1:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor}")
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    for i, lr in enumerate(np.geomspace(lr_min, lr_max, steps).tolist()):
        loss = float(step(lr))
        average = smoothing * average + (1 - smoothing) * loss
        current = average / (1 - smoothing ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(current)
        if not math.isfinite(current) or current > diverge_factor * best:
            diverged = True
            break
        best = min(best, current)
    if not diverged:
        log.info("LR range test reached lr_max=%.4g without diverging: a larger lr_max shows the blow-up", lr_max)
    skip = steps // 10
    return LRRangeResult(lrs, losses, smoothed, suggest_lr(lrs, smoothed, skip_start=skip), diverged,
                         steepest_lr(lrs, smoothed, skip_start=skip))


FLOAT_NOISE = 1e-9
"""A smoothed loss that falls by less than this fraction of itself has not fallen (a constant loss, rounded)."""


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 0) -> float | None:
    """A tenth of the lr where the smoothed loss is lowest (the classic rule of the LR range test: the rate
    where training is fastest but still a factor away from where it blows up), not below the first rate tried.

    The window and the None cases are `steepest_lr`'s. Robust to noise: it needs only where the loss bottoms out,
    not a slope.
    """
    window = _falling_window(smoothed, skip_start)
    if window is None:
        return None
    return float(max(lrs[window.stop - 1] / 10, lrs[0]))


def _falling_window(smoothed: list[float], skip_start: int) -> slice | None:
    """From `skip_start` to the minimum of the finite smoothed losses; None when the loss does not fall there."""
    values = np.asarray(smoothed, dtype=float)
    finite = len(values) if np.isfinite(values).all() else int(np.argmin(np.isfinite(values)))
    start = min(skip_start, max(finite - 1, 0))
    if finite - start < 2:
        return None
    lowest = start + int(np.argmin(values[start:finite]))
    if values[start] - values[lowest] <= FLOAT_NOISE * abs(values[start]):
        return None
    return slice(start, lowest + 1)


def steepest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 0) -> float | None:
    """The lr at the steepest descent of the smoothed loss against log10(lr).

    The window: from point `skip_start` (lr_range_test skips the first 10% of its steps, as fastai does: an
    average of the first few losses is too noisy for a slope) to the minimum of the smoothed loss over the finite
    points, so the rise into divergence after the minimum, and the point that stopped the test, are ignored. The
    slope is `np.gradient(smoothed, log10(lr))` on that window (central differences inside, one-sided at its
    ends); the suggestion is the lr of its most negative value, which is negative whenever the loss falls.

    None when there are fewer than two finite points or the smoothed loss does not fall in the window by more than
    FLOAT_NOISE of itself: the lrs tried were already too high (try a smaller lr_min) or the loss did not react.
    """
    window = _falling_window(smoothed, skip_start)
    if window is None:
        return None
    values = np.asarray(smoothed, dtype=float)
    slope = np.gradient(values[window], np.log10(np.asarray(lrs[window], dtype=float)))
    return float(lrs[window.start + int(np.argmin(slope))])


def plot_lr_range(result: LRRangeResult, path: Path) -> None:
    """PNG of the raw and smoothed loss against lr (log axis), the suggested lr as a vertical line; atomic."""
    # The object-oriented API with an explicit Agg canvas: no pyplot, so no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    if result.suggested_lr is not None:
        ax.axvline(result.suggested_lr, color="C3", linestyle="--", label=f"suggested lr {result.suggested_lr:.4g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # y range of the smoothed curve: a raw loss blowing up at the end would squash the rest
        low, high = min(finite), max(finite)
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test" + ("" if result.diverged else " (did not diverge)"))
    ax.legend()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------------- profiler


PROFILE_TABLE_ROWS = 30
TRACE_FILE = "trace.json"
TABLE_FILE = "profile.txt"


class Profiler:
    """torch.profiler over `steps` optimizer steps after `wait` + `warmup` skipped ones; call `.step()` after each.

    When the active steps end (or the `with` block ends inside them), writes to `out_dir`
    - `trace.json`: a Chrome trace, open it in https://ui.perfetto.dev or chrome://tracing;
    - `profile.txt`: the top PROFILE_TABLE_ROWS ops by self CPU time, and by self CUDA time when CUDA is there.
    CPU activity is always recorded, CUDA activity when `torch.cuda.is_available()`. A block that ends before
    the active steps writes nothing. `steps=0` makes a no-op: torch.profiler is not touched at all.

    Example:
        with Profiler(out_dir, steps=5) as profiler:
            for batch in batches:
                ...; optimizer.step(); profiler.step()
    """

    def __init__(self, out_dir: Path, steps: int, wait: int = 1, warmup: int = 1):
        if steps < 0 or wait < 0 or warmup < 0:
            raise ValueError(f"Profiler needs steps, wait, warmup >= 0, got {steps}, {wait}, {warmup}")
        self.out_dir = Path(out_dir)
        self.steps = steps
        self.wait = wait
        self.warmup = warmup
        self._profile: torch.profiler.profile | None = None

    def __enter__(self) -> Profiler:
        if self.steps == 0:
            return self
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profile = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.steps, repeat=1),
            on_trace_ready=self._export,
        )
        self._profile.__enter__()
        return self

    def step(self) -> None:
        """Mark the end of one optimizer step."""
        if self._profile is not None:
            self._profile.step()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._profile is not None:
            profile, self._profile = self._profile, None
            profile.__exit__(exc_type, exc, traceback)

    def _export(self, profile: torch.profiler.profile) -> None:
        with atomic_write(self.out_dir / TRACE_FILE) as tmp:
            profile.export_chrome_trace(str(tmp))
        averages = profile.key_averages()
        tables = ["by self CPU time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=PROFILE_TABLE_ROWS)]
        if torch.profiler.ProfilerActivity.CUDA in profile.activities:
            tables.append("by self CUDA time\n"
                          + averages.table(sort_by="self_device_time_total", row_limit=PROFILE_TABLE_ROWS))
        with atomic_write(self.out_dir / TABLE_FILE) as tmp:
            tmp.write_text("\n\n".join(tables) + "\n", encoding="utf-8")
        log.info("profile of %d steps written to %s (open %s in https://ui.perfetto.dev)", self.steps,
                 self.out_dir, TRACE_FILE)


# ----------------------------------------------------------------------------------------- layer-group statistics


def layer_groups(model: nn.Module, n_groups: int = 4) -> dict[str, list[nn.Parameter]]:
    """The parameters of an EssayScorer-like model by depth: "embeddings", "layers_<a>-<b>", ..., "head".

    `model.encoder_layers()` (bottom first) is split into min(n_groups, number of layers) contiguous chunks of
    near-equal size (the lower chunks one layer longer when it does not divide), named by their first and last
    layer (12 layers, 2 groups: layers_0-5, layers_6-11). "embeddings" is `model.embeddings_module()`, "head" is
    `model.head`. Other parameters (the pooling, DeBERTa's relative position embeddings) are in no group.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    layers = list(model.encoder_layers())
    if not layers:
        raise ValueError(f"layer_groups: {type(model).__name__}.encoder_layers() is empty")
    groups = {"embeddings": list(model.embeddings_module().parameters())}
    for chunk in np.array_split(np.arange(len(layers)), min(n_groups, len(layers))):
        first, last = int(chunk[0]), int(chunk[-1])
        groups[f"layers_{first}-{last}"] = [p for i in range(first, last + 1) for p in layers[i].parameters()]
    groups["head"] = list(model.head.parameters())
    return groups


def grad_stats(groups: Mapping[str, Iterable[nn.Parameter]]) -> dict[str, float]:
    """{"layer_grad_norm/<group>": L2 norm of the group's gradients}; parameters without a gradient count as 0.

    Call it after the backward pass and before `optimizer.zero_grad`, after unscaling under an fp16 GradScaler
    (the clip step unscales); a frozen group reads 0.0.
    """
    names, norms = [], []
    for name, params in groups.items():
        grads = [torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32) for p in params if p.grad is not None]
        if grads:
            names.append(name)
            norms.append(torch.linalg.vector_norm(torch.stack(grads)))
    values = dict(zip(names, torch.stack(norms).tolist(), strict=True)) if norms else {}  # one device sync
    return {f"layer_grad_norm/{name}": values.get(name, 0.0) for name in groups}


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The output itself if a tensor, else the first tensor in a tuple / list / ModelOutput (a Mapping)."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, list | tuple) else ()
    return next((item for item in items if isinstance(item, torch.Tensor)), None)


def activation_stats(model: nn.Module, run_forward: Callable[[], Any], modules: Mapping[str, nn.Module]
                     ) -> dict[str, float]:
    """{"act_mean/<name>": ..., "act_std/<name>": ...} of each module's output during `run_forward()`.

    `run_forward` runs the model on a batch (or several); it is called once, under torch.no_grad and with the
    model in eval mode (no dropout; the previous mode is restored). A module's statistics are over every element
    of its output (the first tensor of a tuple or ModelOutput), padding included, and over every call when it
    runs more than once; std is the population std. The hooks are removed whatever happens.
    """
    submodules = {id(m) for m in model.modules()}
    for name, module in modules.items():
        if id(module) not in submodules:
            raise ValueError(f"activation_stats: module {name!r} ({type(module).__name__}) is not part of the model")
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in modules}  # sum, sum of squares, count (float64)

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise ValueError(f"activation_stats: module {name!r} ({type(module).__name__}) output has no "
                                 f"tensor ({type(output).__name__}); pick a module that returns one")
            values = tensor.detach().double()
            sums[name][0] += values.sum()
            sums[name][1] += values.square().sum()
            sums[name][2] += values.numel()

        return record

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    stats = {}
    for name, (total, squares, count) in sums.items():
        if count == 0:
            raise ValueError(f"activation_stats: module {name!r} did not run during run_forward")
        mean = float(total) / count
        stats[f"act_mean/{name}"] = mean
        stats[f"act_std/{name}"] = math.sqrt(max(float(squares) / count - mean * mean, 0.0))
    return stats


# ---------------------------------------------------------------------------------------------- training watch


class TrainingWatch:
    """Warns (logging.warning, and returned by `update`) when the training loss goes flat or the gradient explodes.

    - flat: over the last `flat_steps` losses, |mean of the second half - mean of the first half| / |mean of the
      first half| < `flat_tolerance`.
    - explode: the grad norm is not finite, or, once `warmup_steps` finite norms have been seen, above
      `explode_factor` x the median of the previous finite norms (the last `median_window` of them).
    - not finite: the loss itself is NaN or infinite (it is then kept out of the flat window).
    Each kind warns once, then again only after its condition has cleared (a normal update) and come back.
    """

    def __init__(self, flat_steps: int = 50, flat_tolerance: float = 1e-3, explode_factor: float = 10.0,
                 warmup_steps: int = 10, median_window: int = 200):
        if flat_steps < 2:
            raise ValueError(f"flat_steps must be >= 2, got {flat_steps}")
        if explode_factor <= 1:
            raise ValueError(f"explode_factor must be > 1, got {explode_factor}")
        if warmup_steps < 1 or median_window < warmup_steps:
            raise ValueError(f"need 1 <= warmup_steps <= median_window, got {warmup_steps}, {median_window}")
        self.flat_steps = flat_steps
        self.flat_tolerance = flat_tolerance
        self.explode_factor = explode_factor
        self.warmup_steps = warmup_steps
        self.median_window = median_window
        self._losses: deque[float] = deque(maxlen=flat_steps)
        self._norms: deque[float] = deque(maxlen=median_window)
        self._raised: set[str] = set()

    def update(self, step: int, loss: float, grad_norm: float | None) -> list[str]:
        """Record one optimizer step's training loss and gradient norm (None: not measured); the new warnings."""
        found = {"loss_not_finite": self._loss_not_finite(step, loss), "flat": self._flat(step, loss),
                 "explode": self._explode(step, grad_norm)}
        messages = []
        for kind, message in found.items():
            if message is None:
                self._raised.discard(kind)
            elif kind not in self._raised:
                self._raised.add(kind)
                log.warning("%s", message)
                messages.append(message)
        return messages

    @staticmethod
    def _loss_not_finite(step: int, loss: float) -> str | None:
        if math.isfinite(loss):
            return None
        return (f"step {step}: the training loss is {loss}. Fixes: lower the learning rate, set max_grad_norm, "
                "train in bf16 (fp16 overflows) or fp32.")

    def _flat(self, step: int, loss: float) -> str | None:
        if not math.isfinite(loss):
            return None
        self._losses.append(loss)
        if len(self._losses) < self.flat_steps:
            return None
        values = np.asarray(self._losses)
        half = self.flat_steps // 2
        before, after = float(values[:half].mean()), float(values[half:].mean())
        change = abs(after - before) / max(abs(before), 1e-12)
        if change >= self.flat_tolerance:
            return None
        return (f"step {step}: the training loss is flat at {loss:.4g} (mean {after:.4g} over the last "
                f"{self.flat_steps - half} steps vs {before:.4g} over the {half} before, a relative change of "
                f"{change:.4g} < {self.flat_tolerance:.4g}). Likely causes: the learning rate is too low (nothing "
                "moves) or too high (stuck predicting the mean), the layers are frozen (layer_grad_norm/* near 0), or "
                "the labels are constant (check the batch targets).")

    def _explode(self, step: int, grad_norm: float | None) -> str | None:
        if grad_norm is None:
            return None
        median = float(np.median(self._norms)) if self._norms else math.nan
        fixes = "Fixes: lower the learning rate, set max_grad_norm (clipping), train in bf16 rather than fp16."
        if not math.isfinite(grad_norm):
            return f"step {step}: the gradient norm is {grad_norm} (running median {median:.4g}). {fixes}"
        exploded = len(self._norms) >= self.warmup_steps and grad_norm > self.explode_factor * median
        self._norms.append(grad_norm)
        if not exploded:
            return None
        return (f"step {step}: the gradient norm {grad_norm:.4g} is {grad_norm / median:.4g}x the running median "
                f"{median:.4g} (limit {self.explode_factor:.4g}x). {fixes}")
