"""The LR range test of one model (`train.lr_find=true`): loss against a growing learning rate, and a suggestion.

The model, its optimizer (parameter groups with their head and layer-wise rates) and its batches are exactly
training's, on fold 0's training rows of the first stage; every group's rate is scaled together, so the
suggestion (a tenth of the rate at the lowest smoothed loss) is for `lr`, the others keeping their ratios to
it. Nothing is trained for good: the weights are dropped afterwards and no fold folder changes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from common.config.layout import checkpoint_dir
from common.config.model_params import ModelParams
from common.core.io import write_csv, write_json
from common.train.diagnostics import lr_range_test, plot_lr_range
from common.train.engine import epoch_batches
from common.train.pseudo import StudentPseudo

log = logging.getLogger(__name__)

LR_MIN, LR_MAX, STEPS = 1e-7, 1.0, 100


class _NoSchedule:
    """The range test sets the rates itself: the optimizer step must not move them."""

    def step(self) -> None:
        pass


def lr_find_dir(out: Path, name: str) -> Path:
    return Path(out) / "lr_find" / name


def find_lr(spec: ModelParams, backbone: str, folds: pd.DataFrame, texts: list[str], out: Path, seed: int,
            device: str, pseudo: StudentPseudo | None = None, lr_min: float = LR_MIN, lr_max: float = LR_MAX,
            steps: int = STEPS, source: str | None = None) -> float | None:
    """Run the range test for `spec`; write lr_find.csv, lr_find.png and suggestion.json under
    output/lr_find/<model>/ and return the suggested learning rate (None: the loss never fell). `source`: the
    essays' `data_fingerprint` when the stage has it (hashed otherwise)."""
    from common.train import training
    from common.train.fold_run import plan_run, setup_stage
    from common.train.rows import tokenize_train

    tokenizer, data = tokenize_train(spec, backbone, folds, texts, pseudo, source)
    scratch = checkpoint_dir(out, "lr_find", None) / spec.name
    fold = int(sorted(folds["fold"].unique())[0])
    run = plan_run(spec, backbone, tokenizer, data, fold, scratch, seed, device)
    run.model = run.model.to(run.engine.device)
    st = setup_stage(run, 0, spec.stages[0], None)
    base = [group.get("initial_lr", group["lr"]) for group in st.optimizer.param_groups]  # warmup set lr to 0
    batches: list[list[int]] = []
    epoch = 0
    st.model.train()

    def step(lr: float) -> float:
        nonlocal epoch
        for group, group_lr in zip(st.optimizer.param_groups, base, strict=True):
            group["lr"] = group_lr * lr / spec.lr
        losses = []
        for micro in range(run.accum):
            if not batches:
                batches.extend(epoch_batches(run.lengths, st.rows, spec.batch_size, run.seed, epoch, run.engine.rank,
                                             run.engine.world, spec.batch_tokens))
                epoch += 1
            losses.append(training._micro_step(run, st, batches.pop(0), micro == run.accum - 1))
        run.engine.step(st.model, st.optimizer, _NoSchedule(), spec.max_grad_norm)
        return float(sum(losses) / len(losses))

    try:
        result = lr_range_test(step, lr_min=lr_min, lr_max=lr_max, steps=steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    folder = lr_find_dir(out, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "lr_find.csv", result.to_frame())
    plot_lr_range(result, folder / "lr_find.png")
    suggested = None if result.suggested_lr is None else float(f"{result.suggested_lr:.4g}")
    steepest = None if result.steepest_lr is None else float(f"{result.steepest_lr:.4g}")
    write_json(folder / "suggestion.json", {"suggested_lr": suggested, "steepest_lr": steepest, "params_lr": spec.lr,
                                            "steps": len(result.lrs), "diverged": result.diverged, "fold": fold,
                                            "stage": 1})
    if suggested is None:
        log.warning("%s: LR range test over %d steps (%.1e to %.1e): the loss never fell, no suggestion; look at %s "
                    "(frozen layers? constant labels?)", spec.name, len(result.lrs), lr_min, result.lrs[-1],
                    folder / "lr_find.png")
    else:
        log.info("%s: LR range test over %d steps (%.1e to %.1e): suggested lr %.2e (params: lr=%.2e); plot %s",
                 spec.name, len(result.lrs), lr_min, result.lrs[-1], suggested, spec.lr, folder / "lr_find.png")
    return suggested
