"""Inference: every fold model of every ensemble member on the test essays, then the ensemble.

Built to run on Kaggle the first time:
- offline by construction: `common.core.offline.force_offline()` sets the hub-offline variables before
  transformers is imported (05_infer/run.py calls it first), and every load is from a local folder;
- every artifact is checked before any model runs (`ArtifactSet.check`): there, and readable (weights
  headers, every JSON, and the selected ensemble method's files: `EnsembleArtifact.check`), so a missing
  or truncated fold or threshold file fails in seconds with its path and the fix, never after an hour or
  with a partial submission;
- fast: each distinct tokenizer tokenises the essays once; essays are sorted by length and batched by
  a token budget (dynamic padding); autocast fp16 on CUDA (T4 and P100 have no bf16) with fp32
  weights; `torch.inference_mode`; one model in memory at a time; every visible GPU gets a share of
  the batches (Kaggle's 2xT4), each on its own thread;
- the same code path 02_train used for its OOF predictions (tokenize_essays, EssayScorer), so a model
  predicts here what it predicted there (a test checks it).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from common.config.params import Params
from common.core.artifact_checks import (
    COPY_HINT,
    TRUNCATED,
    ArtifactError,
    Problems,
    read_json,
    safetensors_problem,
)
from common.core.devices import autocast_dtype
from common.core.errors import InputError, PipelineError
from common.core.io import atomic_write, staged_dir, write_csv, write_json, write_parquet
from common.ensemble.ensemble_artifact import ENSEMBLE_DIR, EnsembleArtifact
from common.models import EssayScorer
from common.models.scorer import (
    ADAPTER_DIR,
    BACKBONE_CONFIG_DIR,
    CONFIG_FILE,
    HEAD_FILE,
    WEIGHTS_FILE,
    read_config,
)
from common.models.text_model import TextModel, is_text_model
from common.models.tokenization import (
    EssayCollator,
    batches_by_token_budget,
    load_tokenizer,
    model_collator,
    model_token_ids,
    token_settings,
)
from common.prepare.data import read_csv_checked

log = logging.getLogger(__name__)

# Effective fp16 throughput of a T4 on transformer encoders (65 TFLOP/s peak tensor-core fp16; encoders
# at batch sizes that fit reach roughly a fifth of it). Used only for the printed runtime estimate.
T4_EFFECTIVE_FLOPS = 13e12
# A CPU gains nothing from the large batches a GPU needs to fill its cores, and loses cache locality:
# on CPU the token budget is capped here (measured on the demo: 16k-token batches ran ~25% slower).
CPU_BATCH_TOKENS = 4096


@dataclass
class InferPaths:
    test: Path
    sample_submission: Path
    artifacts: Path
    submission: Path
    on_kaggle: bool


def resolve_paths(params: Params) -> InferPaths:
    """Where inference reads and writes: Kaggle's folders when <kaggle_root>/input exists, else local ones.

    `infer.artifacts` overrides the artifacts root in both cases.
    """
    p, prep = params.infer, params.prepare
    kaggle_input = Path(p.kaggle_root) / "input"
    if kaggle_input.is_dir():
        competition = kaggle_input / p.competition_dataset
        return InferPaths(
            test=competition / prep.test_file,
            sample_submission=competition / prep.sample_submission_file,
            artifacts=Path(p.artifacts) if p.artifacts else kaggle_input / p.artifacts_dataset,
            submission=Path(p.kaggle_root) / "working" / "submission.csv",
            on_kaggle=True,
        )
    return InferPaths(
        test=params.input_dir / prep.test_file,
        sample_submission=params.input_dir / prep.sample_submission_file,
        artifacts=Path(p.artifacts) if p.artifacts else params.output_dir,
        submission=params.output_dir / "submission.csv",
        on_kaggle=False,
    )


# ---------------------------------------------------------------------------------------------------
# Test essays and the submission


def read_test(test_path: Path, sample_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test essays (essay_id, full_text) and the sample submission, checked but lenient where it can be.

    Missing files or columns and duplicate ids are errors. Empty or odd essays are predicted anyway
    (with a warning): a score for every id beats no submission. Ids must be the same in both files.
    """
    problems: list[str] = []
    test = read_csv_checked(test_path, ("essay_id", "full_text"), problems)
    sample = read_csv_checked(sample_path, ("essay_id", "score"), problems)
    if problems:
        raise InputError(problems)
    assert test is not None and sample is not None
    test = test.assign(essay_id=test["essay_id"].str.strip(), full_text=test["full_text"].fillna(""))
    sample = sample.assign(essay_id=sample["essay_id"].str.strip())
    for path, frame in ((test_path, test), (sample_path, sample)):
        twice = frame["essay_id"][frame["essay_id"].duplicated()].unique().tolist()
        if twice:
            problems.append(f"{path}: duplicate essay_id {twice[:10]}. Fix: every essay needs its own id.")
    only_test = sorted(set(test["essay_id"]) - set(sample["essay_id"]))
    only_sample = sorted(set(sample["essay_id"]) - set(test["essay_id"]))
    if only_sample:
        problems.append(f"{sample_path}: essay ids {only_sample[:10]} have no essay in {test_path}. Fix: use the "
                        "sample submission that belongs to this test file.")
    if only_test:
        problems.append(f"{test_path}: essay ids {only_test[:10]} are missing from {sample_path}. Fix: use the "
                        "sample submission that belongs to this test file.")
    if problems:
        raise InputError(problems)
    empty = test["full_text"].str.strip() == ""
    if empty.any():
        log.warning("%s: %d empty essay(s) (%s): predicted from special tokens alone", test_path, int(empty.sum()),
                    test.loc[empty, "essay_id"].tolist()[:10])
    return test[["essay_id", "full_text"]].reset_index(drop=True), sample[["essay_id"]].reset_index(drop=True)


def make_submission(sample: pd.DataFrame, test_ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """`essay_id, score` in sample-submission order, validated: every id once, integer scores in 1-6."""
    by_id = pd.Series(np.asarray(scores), index=pd.Index(test_ids, name="essay_id"))
    submission = pd.DataFrame({"essay_id": sample["essay_id"], "score": by_id.reindex(sample["essay_id"]).to_numpy()})
    validate_submission(submission, sample)
    submission["score"] = submission["score"].astype(int)
    return submission


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Raise unless the submission is exactly the sample's ids, in order, with integer scores 1..6."""
    problems = []
    if list(submission.columns) != ["essay_id", "score"]:
        problems.append(f"columns are {list(submission.columns)}, not ['essay_id', 'score']")
    elif submission["essay_id"].tolist() != sample["essay_id"].tolist():
        problems.append("essay ids differ from the sample submission's (set or order)")
    else:
        score = pd.to_numeric(submission["score"], errors="coerce")
        bad = score.isna() | ~score.isin([1, 2, 3, 4, 5, 6])
        if bad.any():
            problems.append(f"{int(bad.sum())} score(s) missing or outside the integers 1-6, e.g. for "
                            f"{submission.loc[bad, 'essay_id'].tolist()[:5]}")
    if problems:
        raise PipelineError("submission not written: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Artifacts


# Tokenizer files AutoTokenizer reads as JSON when a fold folder has them.
TOKENIZER_JSON = ("tokenizer.json", "special_tokens_map.json", "added_tokens.json", "vocab.json")
# What TokenCache needs in a fold's train_config.json["model"] (the later TOKEN_SETTINGS have defaults).
TOKENIZE_SETTINGS = ("max_length", "add_newline_tokens", "padding_side", "truncation_side", "add_special_tokens")


@dataclass
class ArtifactSet:
    """The trained models and the ensemble under one root, as 02_train and 04_ensemble wrote them."""

    root: Path
    spec: dict
    folds: list[int]
    fold_dirs: dict[str, list[Path]] = field(default_factory=dict)
    ensemble: EnsembleArtifact | None = None

    @property
    def models(self) -> list[str]:
        return list(self.spec["models"])

    @classmethod
    def open(cls, root: Path) -> ArtifactSet:
        """Read ensemble.json and check every file inference reads (before any work): all there and whole."""
        spec = EnsembleArtifact.read_spec(root)
        folds = [int(k) for k in spec.get("folds", [])]
        if not folds:
            raise ArtifactError(f"{root / ENSEMBLE_DIR / 'ensemble.json'} lists no folds: re-run 04_ensemble with "
                                "this version")
        artifacts = cls(root=root, spec=spec, folds=folds)
        artifacts.check()
        artifacts.ensemble = EnsembleArtifact.load(root / ENSEMBLE_DIR, spec)
        return artifacts

    def check(self) -> None:
        """Every file inference reads, all there and readable, or one error naming each bad one.

        Per fold model: its weights (the safetensors header: no weights are loaded), scorer.json,
        train_config.json and the tokenizer's JSON files; then the ensemble (`EnsembleArtifact.check`: the
        thresholds, the selected method's entry and files, the stacker's text vocabulary and prompt assigner).
        A file that is there but truncated fails here, not after the fold models ran.
        """
        problems = Problems()
        self.fold_dirs = EnsembleArtifact.member_dirs(self.root, self.spec, self.folds, problems)
        for name in self.fold_dirs:
            rerun_train = (f"re-run python 02_train/run.py train.model={name} (it trains again every fold whose "
                           "files are missing or unreadable)")
            for fold_dir in self.fold_dirs[name]:
                self._check_fold(fold_dir, problems, rerun_train)
        EnsembleArtifact.check(self.root / ENSEMBLE_DIR, self.spec, problems)
        if problems:
            heading = "artifacts missing or unreadable" if problems.unreadable else "artifacts missing"
            raise ArtifactError(
                f"{heading}, so no submission was written:\n  " + "\n  ".join(problems.lines)
                + f"\nFix: copy the complete output of 02_train and 04_ensemble under {self.root} again (make kaggle "
                f"builds such a folder; {COPY_HINT}), or re-make the files:\n  - "
                + "\n  - ".join(problems.fixes)
            )

    @staticmethod
    def _check_fold(fold_dir: Path, problems: Problems, fix: str) -> None:
        """One fold model: what EssayScorer.load and TokenCache read from its folder (a text model: every file of
        it, `TextModel.problem`)."""
        if is_text_model(fold_dir):
            problem = TextModel.problem(fold_dir)
            if problem is not None:
                problems.bad(fold_dir, problem, fix)
            return
        scorer_file = fold_dir / CONFIG_FILE
        if not scorer_file.is_file():
            problems.missing(scorer_file, fix)
        else:
            try:
                read_config(scorer_file)
            except json.JSONDecodeError as exc:
                problems.bad(scorer_file, f"not valid JSON ({exc}): {TRUNCATED}", fix)
            except (OSError, ValueError, TypeError) as exc:  # unknown keys, not an object, not UTF-8
                problems.bad(scorer_file, f"not a scorer config ({exc}): {TRUNCATED}", fix)
        train_config = read_json(fold_dir / "train_config.json", problems, fix)
        if train_config is not None:
            model = train_config.get("model")
            absent = [k for k in TOKENIZE_SETTINGS if k not in model] if isinstance(model, dict) else ["model"]
            if absent:
                problems.bad(fold_dir / "train_config.json", f"lacks {absent}: {TRUNCATED}", fix)
        read_json(fold_dir / "tokenizer_config.json", problems, fix)
        for name in TOKENIZER_JSON:
            if (fold_dir / name).is_file():
                read_json(fold_dir / name, problems, fix)
        adapter = fold_dir / ADAPTER_DIR
        weights = fold_dir / WEIGHTS_FILE
        if adapter.is_dir():  # LoRA: adapter/ (peft) and head.safetensors beside it
            read_json(adapter / "adapter_config.json", problems, fix)
            tensors = [p for p in (adapter / "adapter_model.safetensors", fold_dir / HEAD_FILE) if p.is_file()]
            if not (adapter / "adapter_model.safetensors").is_file() and not (adapter / "adapter_model.bin").is_file():
                problems.missing(adapter / "adapter_model.safetensors", fix)
            if not (fold_dir / HEAD_FILE).is_file():
                problems.missing(fold_dir / HEAD_FILE, fix)
        elif weights.is_file():
            tensors = [weights]
            read_json(fold_dir / BACKBONE_CONFIG_DIR / "config.json", problems, fix)
        else:
            tensors = []
            problems.missing(weights, fix, what=" (or adapter/ for a LoRA model)")
        for path in tensors:
            problem = safetensors_problem(path)
            if problem is not None:
                problems.bad(path, problem, fix)


# ---------------------------------------------------------------------------------------------------
# Predicting with one model


def _tokenizer_key(fold_dir: Path, settings: dict) -> str:
    """Two fold models share token ids when their tokenizer files and tokenisation settings agree."""
    digest = hashlib.sha256()
    for name in sorted(p.name for p in fold_dir.iterdir() if p.name.startswith(("tokenizer", "special_tokens",
                                                                               "spm", "vocab", "added_tokens"))):
        digest.update(name.encode())
        digest.update((fold_dir / name).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


class TokenCache:
    """Token ids of the test essays per distinct tokenizer + settings: each tokenises once."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self._ids: dict[str, tuple[list[list[int]], EssayCollator]] = {}

    def get(self, fold_dir: Path) -> tuple[list[list[int]], EssayCollator]:
        spec = json.loads((fold_dir / "train_config.json").read_text(encoding="utf-8"))["model"]
        settings = token_settings(spec)
        key = _tokenizer_key(fold_dir, settings)
        if key not in self._ids:
            tokenizer = load_tokenizer(str(fold_dir), add_newline_tokens=settings["add_newline_tokens"],
                                       padding_side=settings["padding_side"])
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


def write_outputs(submission_path: Path, submission: pd.DataFrame, infer_dir: Path | None = None,
                  metrics: dict | None = None, predictions: pd.DataFrame | None = None) -> None:
    """The submission and, locally (`infer_dir`), infer/metrics.json and infer/test_predictions.parquet, together:
    every file is written in full (staged) before any replaces its predecessor, so a failure (a full disk) leaves
    the previous outputs as they were, never a new submission beside old predictions. Kaggle writes the
    submission alone."""
    if infer_dir is None:
        write_csv(submission_path, submission)
        return
    with atomic_write(submission_path) as staged_submission:
        submission.to_csv(staged_submission, index=False)
        with staged_dir(infer_dir) as tmp:
            write_json(tmp / "metrics.json", metrics)
            write_parquet(tmp / "test_predictions.parquet", predictions)
        # infer/ is in place; leaving atomic_write renames the submission beside it


def ensemble_scores(artifacts: ArtifactSet, predictions: TestPredictions, texts: list[str]) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """(continuous ensemble prediction, integer scores 1-6) with the selected method and its thresholds."""
    return artifacts.ensemble.predict(predictions.preds, predictions.probs, texts)


# ---------------------------------------------------------------------------------------------------
# Runtime estimate


def count_parameters(fold_dir: Path) -> int:
    """Parameters of a saved fold model, read from its safetensors header (no weights loaded); 0 for a text model
    (no encoder: its cost per essay is negligible beside one)."""
    if is_text_model(fold_dir):
        return 0
    weights = fold_dir / "model.safetensors"
    if not weights.is_file():
        config = json.loads((fold_dir / "backbone" / "config.json").read_text()) if (
            fold_dir / "backbone" / "config.json").is_file() else {}
        hidden, layers = config.get("hidden_size", 768), config.get("num_hidden_layers", 12)
        return 12 * layers * hidden * hidden
    total = 0
    with safe_open(str(weights), framework="pt") as handle:
        names = handle.keys()  # a safe_open handle is not iterable itself
        for key in names:
            total += math.prod(handle.get_slice(key).get_shape())
    return total


def estimate_runtime(artifacts: ArtifactSet, mean_tokens: float, n_essays: int, measured_essays_per_s: float | None,
                     limit_hours: float) -> dict:
    """Hours for `n_essays` with every member model: from this run's measured speed, and on a T4 (FLOPs).

    The T4 figure counts 2 x parameters FLOPs per token (the encoder's matmuls; attention adds a little
    at 1024 tokens) at T4_EFFECTIVE_FLOPS. Both are estimates; Kaggle's limit is checked on the larger.
    """
    n_fold_models = sum(len(artifacts.fold_dirs[m]) for m in artifacts.models)
    flops = sum(2 * count_parameters(artifacts.fold_dirs[m][0]) * mean_tokens * n_essays * len(artifacts.fold_dirs[m])
                for m in artifacts.models)
    t4_hours = flops / T4_EFFECTIVE_FLOPS / 3600
    here_hours = n_essays * n_fold_models / measured_essays_per_s / 3600 if measured_essays_per_s else None
    worst = max(t4_hours, here_hours or 0.0)
    return {"n_essays": n_essays, "n_fold_models": n_fold_models, "t4_hours": t4_hours,
            "this_device_hours": here_hours, "limit_hours": limit_hours, "within_limit": worst < limit_hours}
