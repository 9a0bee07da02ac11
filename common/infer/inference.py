"""Inference: every fold model of every ensemble member on the test essays, then the ensemble.

Built to run on Kaggle the first time:
- offline by construction: `common.core.offline.force_offline()` sets the hub-offline variables before
  transformers is imported (05_infer/run.py calls it first), and every load is from a local folder that
  `common.infer.artifacts.ArtifactSet` checked whole before any model runs;
- fast: each distinct tokenizer tokenises the essays once; essays are sorted by length and batched by
  a token budget (dynamic padding); autocast fp16 on CUDA (T4 and P100 have no bf16) with fp32
  weights; `torch.inference_mode`; one model in memory at a time; every visible GPU gets a share of
  the batches (Kaggle's 2xT4), each on its own thread;
- the same code path 02_train used for its OOF predictions (tokenize_essays, EssayScorer), so a model
  predicts here what it predicted there (a test checks it).
The test essays come in and the submission goes out through `common.infer.submission`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common.core.devices import autocast_dtype
from common.core.errors import PipelineError
from common.infer.artifacts import ArtifactSet
from common.models import EssayScorer
from common.models.batching import batches_by_token_budget
from common.models.text_model import TextModel, is_text_model
from common.models.tokenization import (
    EssayCollator,
    TokenSettings,
    load_tokenizer,
    model_collator,
    model_token_ids,
)

log = logging.getLogger(__name__)

# A CPU gains nothing from the large batches a GPU needs to fill its cores, and loses cache locality:
# on CPU the token budget is capped here (measured on the demo: 16k-token batches ran ~25% slower).
CPU_BATCH_TOKENS = 4096


# ---------------------------------------------------------------------------------------------------
# Predicting with one model


def _tokenizer_key(fold_dir: Path, settings: TokenSettings) -> str:
    """Two fold models share token ids when their tokenizer files and tokenisation settings agree."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in fold_dir.iterdir() if p.name.startswith(("tokenizer", "special_tokens",
                                                                               "spm", "vocab", "added_tokens"))):
        digest.update(name.encode())
        digest.update((fold_dir / name).read_bytes())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return digest.hexdigest()


class TokenCache:
    """Token ids of the test essays per distinct tokenizer + settings: each tokenises once."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self._ids: dict[str, tuple[list[list[int]], EssayCollator]] = {}

    def get(self, fold_dir: Path) -> tuple[list[list[int]], EssayCollator]:
        spec = json.loads((fold_dir / "train_config.json").read_text(encoding="utf-8"))["model"]
        settings = TokenSettings.of(spec)
        key = _tokenizer_key(fold_dir, settings)
        if key not in self._ids:
            tokenizer = load_tokenizer(str(fold_dir), add_newline_tokens=settings.add_newline_tokens,
                                       padding_side=settings.padding_side)
            self._ids[key] = (model_token_ids(tokenizer, self.texts, settings), model_collator(tokenizer, settings))
        return self._ids[key]

    @property
    def n_tokenizers(self) -> int:
        return len(self._ids)


@torch.inference_mode()
def _predict_batches(model: EssayScorer, ids: list[list[int]], collator: EssayCollator, batches: list[list[int]],
                     device: torch.device, dtype: torch.dtype | None, out: np.ndarray, probs: np.ndarray | None,
                     progress: tqdm | None) -> None:
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    for batch_rows in batches:
        batch = collator([{"input_ids": ids[i]} for i in batch_rows])
        with autocast:
            windows = batch["windows"].to(device) if "windows" in batch else None
            scores, p = model.predict(batch["input_ids"].to(device), batch["attention_mask"].to(device), windows)
        out[batch_rows] = scores.float().cpu().numpy()
        if probs is not None and p is not None:
            probs[batch_rows] = p.float().cpu().numpy()
        if progress is not None:
            progress.update(len(batch_rows))


def predict_fold_model(fold_dir: Path, ids: list[list[int]], collator: EssayCollator, devices: list[torch.device],
                       precision: str, batch_tokens: int, desc: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (n,) and class probabilities (n, 6) or None of one saved fold model.

    With several devices the model is copied to each and the length-sorted batches are dealt out
    round-robin, one thread per device (the GIL is released inside CUDA kernels).
    """
    models = [EssayScorer.load(fold_dir, device=device) for device in devices]
    n = len(ids)
    preds = np.full(n, np.nan)
    probs = np.full((n, 6), np.nan) if models[0].head.gives_probs else None
    if all(d.type == "cpu" for d in devices):
        batch_tokens = min(batch_tokens, CPU_BATCH_TOKENS)
    batches = batches_by_token_budget([len(x) for x in ids], batch_tokens)
    shares = [batches[i :: len(devices)] for i in range(len(devices))]
    with tqdm(total=n, desc=desc or fold_dir.name, unit="essay", leave=False) as progress:
        if len(devices) == 1:
            _predict_batches(models[0], ids, collator, shares[0], devices[0], autocast_dtype(precision, devices[0]),
                             preds, probs, progress)
        else:
            with ThreadPoolExecutor(len(devices)) as pool:
                jobs = [pool.submit(_predict_batches, m, ids, collator, share, d, autocast_dtype(precision, d),
                                    preds, probs, None) for m, share, d in zip(models, shares, devices, strict=True)]
                for job in jobs:
                    job.result()
            progress.update(n)
    del models
    gc.collect()
    if any(d.type == "cuda" for d in devices):
        torch.cuda.empty_cache()
    if np.isnan(preds).any():
        raise PipelineError(f"{fold_dir}: {int(np.isnan(preds).sum())} NaN predictions (an fp16 overflow? try "
                            "infer.precision=fp32)")
    return preds, probs


# ---------------------------------------------------------------------------------------------------
# The ensemble


MIN_SPREAD_ESSAYS = 50
"""Fewest test essays the spread correction estimates its factor on (Kaggle's visible test has 3)."""


@dataclass
class TestPredictions:
    preds: dict[str, np.ndarray]  # model -> mean over its fold models, (n,)
    probs: dict[str, pd.DataFrame]  # model -> mean class probabilities, prob_1..prob_6 (heads that have them)
    seconds: dict[str, float]
    fold_preds: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (n_members, n) per member model
    members: dict[str, list[str]] = field(default_factory=dict)  # model -> its member folders' names (fold_0, ...)


def spread(fold_preds: np.ndarray) -> dict[str, float]:
    """How much averaging the fold models narrows a model's test predictions, from the test predictions alone.

    Thresholds and the stacker are fitted on OOF predictions, each made by one fold model; test essays get the
    mean of the fold models, whose fold-specific errors partly cancel, so its spread is narrower. `fold_std`: the
    root mean variance of the single fold models' predictions; `mean_std`: the standard deviation of their mean;
    `factor` = fold_std / mean_std (1: no narrowing).
    """
    fold_std = float(np.sqrt(np.mean(np.var(fold_preds, axis=1))))
    mean_std = float(np.std(fold_preds.mean(axis=0)))
    return {"fold_std": fold_std, "mean_std": mean_std, "factor": fold_std / mean_std if mean_std > 0 else 1.0}


def correct_spread(predictions: TestPredictions) -> TestPredictions:
    """Each model's mean prediction stretched about its own mean by its spread factor, so the test essays reach
    the thresholds and the stacker on the spread of a single fold model, as the OOF rows did. Needs at least
    MIN_SPREAD_ESSAYS essays; fewer are returned unchanged."""
    preds = {}
    for name, mean in predictions.preds.items():
        folds = predictions.fold_preds.get(name)
        if folds is None or mean.size < MIN_SPREAD_ESSAYS or len(folds) < 2:
            preds[name] = mean
            continue
        factor = spread(folds)["factor"]
        preds[name] = mean.mean() + (mean - mean.mean()) * factor
    return dataclasses.replace(predictions, preds=preds)


def predict_models(artifacts: ArtifactSet, texts: list[str], devices: list[torch.device], precision: str,
                   batch_tokens: int) -> TestPredictions:
    """Every ensemble member: the mean of its fold models' predictions (as the stacker was trained on)."""
    cache = TokenCache(texts)
    preds, probs, seconds, per_fold = {}, {}, {}, {}
    for name in artifacts.models:
        start = time.perf_counter()
        fold_preds, fold_probs = [], []
        for fold_dir in artifacts.fold_dirs[name]:
            if is_text_model(fold_dir):
                fold_preds.append(TextModel.load(fold_dir).predict(texts))
                continue
            ids, collator = cache.get(fold_dir)
            pred, prob = predict_fold_model(fold_dir, ids, collator, devices, precision, batch_tokens,
                                            desc=f"{name} {fold_dir.name}")
            fold_preds.append(pred)
            if prob is not None:
                fold_probs.append(prob)
        per_fold[name] = np.vstack(fold_preds)
        preds[name] = per_fold[name].mean(axis=0)
        if fold_probs:
            probs[name] = pd.DataFrame(np.mean(fold_probs, axis=0), columns=[f"prob_{s}" for s in range(1, 7)])
        seconds[name] = time.perf_counter() - start
        log.info("%s: %d models (%s) in %.1f s", name, len(artifacts.fold_dirs[name]),
                 ", ".join(d.name for d in artifacts.fold_dirs[name]), seconds[name])
    log.info("%d distinct tokenizer(s) tokenised the essays", cache.n_tokenizers)
    return TestPredictions(preds=preds, probs=probs, seconds=seconds, fold_preds=per_fold,
                           members={name: [d.name for d in artifacts.fold_dirs[name]] for name in artifacts.models})


def prediction_frame(test_ids: np.ndarray, predictions: TestPredictions) -> pd.DataFrame:
    """essay_id, then per model its mean prediction `<model>` and every member model's `<model>__<member>`
    (`<model>__fold_<k>`; with seeds `__fold_<k>_seed<s>`, a full fit `__full`)."""
    columns: dict[str, np.ndarray] = {"essay_id": np.asarray(test_ids)}
    for name, mean in predictions.preds.items():
        columns[name] = mean
        values = predictions.fold_preds.get(name, [])
        names = predictions.members.get(name) or [f"fold_{k}" for k in range(len(values))]
        for member, column in zip(names, values, strict=True):
            columns[f"{name}__{member}"] = column
    return pd.DataFrame(columns)


def ensemble_scores(artifacts: ArtifactSet, predictions: TestPredictions, texts: list[str]) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """(continuous ensemble prediction, integer scores 1-6) with the selected method and its thresholds."""
    return artifacts.ensemble.predict(predictions.preds, predictions.probs, texts)
