"""Typed pipeline parameters: `params.yaml` plus `dotted.key=value` command-line overrides.

Every setting of every stage is a typed dataclass field with a help string. `load_params` reads the
YAML file, applies overrides, and checks every key and value against the dataclasses, so a typo or a
value of the wrong type fails at start-up with a message that names the key and the allowed keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ParamsError(ValueError):
    """A key or value in params.yaml or in a command-line override is not valid."""


class FieldErrors(ValueError):
    """A dataclass's own checks failed: `problems` maps each bad field to what is wrong and the fix.

    `load_params` reports each with its key path (`'train.models.x.scorer.pooling': unknown pooling ...`).
    """

    def __init__(self, what: str, problems: dict[str, str]):
        super().__init__(f"invalid {what}: " + "; ".join(f"{name}: {why}" for name, why in problems.items()))
        self.problems = problems


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class PathsParams:
    input: str = _help("Folder holding the competition CSVs (train, test, sample_submission, corpus).", "input")
    output: str = _help("Folder every stage writes its artifacts under.", "output")
    metrics: str = _help(
        "Git-tracked folder of each stage's headline figures (prepare.json, train/<model>.json, thresholds.json, "
        "ensemble.json), which `dvc exp show` compares across experiments; the full metrics stay in paths.output.",
        "metrics")


@dataclass
class PrepareParams:
    train_file: str = _help("Train CSV inside paths.input: essay_id, full_text, score.", "train.csv")
    test_file: str = _help("Test CSV inside paths.input: essay_id, full_text.", "test.csv")
    sample_submission_file: str = _help(
        "Sample submission CSV inside paths.input: essay_id, score.", "sample_submission.csv"
    )
    external_file: str = _help(
        "External PERSUADE-style corpus CSV inside paths.input; empty string when there is none.",
        "persuade_2.0_human_scores_demo_id_github.csv",
    )
    n_folds: int = _help("Number of cross-validation folds.", 4)
    group_by: Literal["duplicates", "prompt"] = _help(
        "'duplicates': folds keep duplicate groups together and balance score, prompt and origin; "
        "'prompt': each fold holds out whole prompt clusters.",
        "duplicates",
    )
    near_duplicate_threshold: float = _help(
        "Cosine similarity (word TF-IDF) at or above which two essays count as near-duplicates.", 0.9
    )
    n_clusters: int = _help("Number of prompt clusters; 0 chooses it from the data.", 0)
    max_clusters: int = _help("Largest number of clusters tried when n_clusters is 0.", 20)


@dataclass
class MlmParams:
    """Masked-language-model domain adaptation of one model's backbone before it is fine-tuned."""

    epochs: float = _help("Epochs of MLM over the train, test and external essays before fine-tuning (0: off). "
                          "The adapted backbone is cached under <paths.output>/mlm/<fingerprint>/, so models "
                          "with the same backbone and MLM settings share one run.", 0.0)
    probability: float = _help("Share of tokens masked.", 0.15)
    whole_word: bool = _help("Mask whole words instead of single tokens.", False)
    max_length: int = _help("Tokens per MLM chunk (long essays are split into chunks).", 512)
    batch_size: int = _help("Chunks per MLM batch.", 16)
    lr: float = _help("MLM learning rate (deberta-v3: ~5e-5; the demo's tiny random backbone needs ~1e-3).", 5e-5)
    held_out_share: float = _help("Share of essays held out to report MLM loss before and after.", 0.05)


@dataclass
class PseudoParams:
    regression_sigma: float = _help(
        "Spread (in score points) of the normal distribution a regression teacher's prediction becomes.", 0.6)


@dataclass(kw_only=True)
class ScorerParams:
    """A model's architecture, the part of common.models.ScorerConfig that params choose.

    Pooling, head and loss are names in the registries of common/models (a new one is one class under its
    registry's decorator: common/models/parts/registry.py), checked here when the params load.
    """

    head: str = _help("Prediction head, by its name in HEADS (common/models/parts/heads.py), e.g. regression, "
                      "classification, ordinal; a wrong name lists every choice.", "regression")
    pooling: str = _help("Pooling of the token states, by its name in POOLINGS (common/models/parts/pooling.py), e.g. mean, "
                         "attention, weighted_layer.", "mean")
    loss: str = _help("Training loss, by its name in LOSSES (common/models/parts/losses.py), e.g. mse, smooth_l1; empty: "
                      "the head's default_loss (regression mse, classification cross_entropy, ordinal "
                      "cumulative_bce).", "")
    dropout: float = _help("Dropout before the head.", 0.1)
    n_dropout_samples: int = _help("Multi-sample dropout: head passes averaged in training.", 1)
    reinit_layers: int = _help("Re-initialise the top N encoder layers with the backbone's own init.", 0)
    freeze_embeddings: bool = _help("Freeze the embedding layer.", False)
    gradient_checkpointing: bool = _help("Trade compute for memory in the backbone (non-reentrant).", False)
    lora_r: int = _help("LoRA rank (peft); 0 fine-tunes every weight.", 0)
    lora_alpha: int = _help("LoRA alpha.", 16)
    lora_dropout: float = _help("LoRA dropout.", 0.05)
    lora_target_modules: list[str] = _help("Modules LoRA adapts (deberta-v3's attention projections; BERT: query, "
                                           "key, value).", factory=lambda: ["query_proj", "key_proj", "value_proj"])

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise FieldErrors(type(self).__name__, problems)

    def problems(self) -> dict[str, str]:
        """What is wrong, by field: a name not in its registry, a value out of range, a bad LoRA combination."""
        # Imported here: the registries import torch, which --help and type errors must not wait for.
        from common.models.parts.heads import HEADS
        from common.models.parts.losses import loss_for
        from common.models.parts.pooling import POOLINGS

        problems = {name: f"{getattr(self, name)!r} is out of range: allowed {spec}"
                    for name, spec in RANGES[ScorerParams].items() if not _in_range(getattr(self, name), spec)}
        for name, registry in (("head", HEADS), ("pooling", POOLINGS)):
            try:
                registry.check(getattr(self, name))
            except ValueError as exc:
                problems[name] = str(exc)
        if "head" not in problems:
            try:
                loss_for(self.head, self.loss)
            except ValueError as exc:
                problems["loss"] = str(exc)
        if self.lora_r > 0 and self.reinit_layers > 0:
            problems["reinit_layers"] = (f"{self.reinit_layers} with lora_r={self.lora_r}: LoRA freezes the backbone, "
                                         "so the re-initialised layers would stay random; use one or the other")
        if self.lora_r > 0 and not self.lora_target_modules:
            problems["lora_target_modules"] = "empty, but LoRA needs at least one module name"
        return problems


@dataclass
class StageParams:
    """One training stage: which rows of the training folds, for how many epochs."""

    rows: Literal["all", "persuade", "other", "pseudo"] = _help(
        "Labelled rows of the training folds by origin (the held-out fold never), or 'pseudo': only the "
        "pseudo-labelled external essays (students; soft labels from a teacher that never saw the held-out fold).",
        "all")
    epochs: float = _help("Epochs of this stage (a fraction stops part-way through one).", 2.0)
    with_pseudo: bool = _help("Students: the pseudo-labelled essays join this stage's rows, each weighing "
                              "pseudo_weight.", False)


@dataclass
class TextModelParams:
    """A classical text model (kind: tfidf): TF-IDF word and char n-grams plus essay counts -> ridge or LightGBM
    (common/models/text_model.py). Every fit (vocabulary, idf, count scaling, learner) sees the training folds only."""

    learner: Literal["ridge", "lightgbm"] = _help(
        "ridge: a linear fit on every column (seconds); lightgbm: gradient-boosted trees (minutes at 17k essays).",
        "ridge")
    word_ngrams: int = _help("Word n-grams 1..N (lower-cased); 0: no word block.", 2)
    char_ngrams: list[int] = _help("char_wb n-grams [min, max] (inside word boundaries); empty: no char block.",
                                   factory=lambda: [3, 5])
    max_features: int = _help("N-grams kept per block: the most frequent in the training rows.", 50000)
    min_df: int = _help("Fewest training essays an n-gram must occur in to be kept.", 2)
    counts: bool = _help("Add the essay counts of common.prepare.text_features (length, structure, spelling, readability), "
                         "standardised on the training rows.", True)
    alpha: float = _help("Ridge: L2 penalty.", 1.0)
    top_features: int = _help("LightGBM: columns it sees, the most correlated with the score on the training rows "
                              "(trees over 100k sparse columns take minutes a fold); 0: all.", 2000)
    rounds: int = _help("LightGBM: boosting rounds (fixed: the held-out fold never stops the fit).", 600)
    learning_rate: float = _help("LightGBM: learning rate.", 0.05)
    num_leaves: int = _help("LightGBM: leaves per tree.", 15)
    feature_fraction: float = _help("LightGBM: share of columns each tree samples.", 0.3)

    def __post_init__(self) -> None:
        problems = {}
        low_high = self.char_ngrams
        if low_high and not (len(low_high) == 2 and 1 <= low_high[0] <= low_high[1] <= 8):
            problems["char_ngrams"] = f"{low_high!r}: give [min, max] with 1 <= min <= max <= 8, or [] for none"
        if self.word_ngrams == 0 and not low_high and not self.counts:
            problems["word_ngrams"] = "0 with no char_ngrams and counts off leaves no feature: turn one on"
        if problems:
            raise FieldErrors(type(self).__name__, problems)


@dataclass
class ModelParams:
    """One model: its key in train.models / train.students is its name (artifacts in output/train/<name>/)."""

    name: str = _help("Set from the model's key in train.models / train.students (not written in params).", "")
    kind: Literal["transformer", "tfidf"] = _help(
        "transformer: a fine-tuned backbone (every key below); tfidf: a classical text model with no backbone, set by "
        "`tfidf` (with seeds and full_fit; the transformer keys are not used).", "transformer")
    tfidf: TextModelParams = _help("kind: tfidf only: the text model's features and learner.",
                                   factory=TextModelParams)
    backbone: str = _help("Hugging Face name or local folder of the backbone; empty: the top-level backbone.", "")
    mlm: MlmParams = _help("MLM domain adaptation of the backbone before fine-tuning (off unless mlm.epochs > 0).",
                           factory=MlmParams)
    scorer: ScorerParams = _help("The model's architecture: pooling, head, loss, how the backbone is tuned.",
                                 factory=ScorerParams)
    # Tokenisation
    max_length: int = _help("Tokens kept per essay (truncation beyond).", 1024)
    add_newline_tokens: bool = _help("Add newline tokens (DeBERTa drops newlines) and resize embeddings.", True)
    padding_side: Literal["right", "left"] = _help("Side padding goes on.", "right")
    truncation_side: Literal["right", "left", "head_tail"] = _help(
        "What a long essay keeps: right: its beginning; left: its end; head_tail: its first quarter of max_length "
        "and its end (training and inference alike).", "right")
    add_special_tokens: bool = _help("Add [CLS]/[SEP] (or the tokenizer's equivalents).", True)
    windows: int = _help(
        "Long essays: up to this many windows of max_length tokens (each between the special tokens, overlapping "
        "by window_overlap), scored each and their logits averaged, in training and inference alike; what does not "
        "fit them is cut by truncation_side. 1: one window. Memory grows with it: lower batch_size.", 1)
    window_overlap: int = _help("Essay tokens consecutive windows share (windows > 1).", 64)
    token_cutout: float = _help("Augmentation: share of each training batch's real tokens replaced by the mask token "
                                "(special tokens kept; evaluation and inference see whole essays). 0: off.", 0.0)
    random_crop: float = _help("Augmentation: share of training essays cut, each time drawn, to a random contiguous "
                               "span of half to all of their tokens (special tokens kept). 0: off.", 0.0)
    max_length_schedule: list[int] = _help(
        "Progressive max_length: in epoch e of each stage, training essays are cut to entry e (the last entry from "
        "then on) as truncation_side cuts; evaluation and inference use max_length. Empty: max_length throughout.",
        factory=list)
    # Optimisation
    stages: list[StageParams] = _help(
        "Training stages in order, each with a fresh optimizer and schedule: rows and epochs (e.g. persuade rows, "
        "then other rows; a student's pseudo-labelled essays first). Evaluation and keep_best follow the last.",
        factory=lambda: [StageParams()])
    batch_size: int = _help("Essays per batch per device.", 8)
    batch_tokens: int = _help(
        "Training batches by a budget of tokens instead: essays of similar length, essays x longest <= batch_tokens "
        "(short essays in big batches); accumulation stays effective_batch_size / batch_size micro-batches a step. "
        "0: batch_size essays.", 0)
    effective_batch_size: int = _help(
        "Essays per optimizer step across devices and accumulation steps (a multiple of batch_size).", 16
    )
    lr: float = _help("Learning rate of the top encoder layer (lower layers: layerwise_lr_decay); the rate the "
                      "training logs show as lr.", 2e-5)
    head_lr: float = _help("Learning rate of pooling and head.", 1e-3)
    layerwise_lr_decay: float = _help("LR multiplier per encoder layer going down (1.0: none).", 0.9)
    weight_decay: float = _help("AdamW weight decay (not on biases and norms).", 0.01)
    scheduler: Literal["linear", "cosine", "constant"] = _help("LR schedule after warmup.", "cosine")
    warmup_ratio: float = _help("Share of steps spent warming up.", 0.1)
    max_grad_norm: float = _help("Gradient clipping norm (0: off).", 1.0)
    ema_decay: float = _help("EMA of weights used for evaluation and saving (0: off).", 0.0)
    swa_start: float = _help(
        "SWA: from this share of the last stage's steps on, the weights after every optimizer step are averaged "
        "(torch.optim.swa_utils.AveragedModel); the average is the model evaluated at the end and saved. 0: off.",
        0.0)
    awp_lr: float = _help("Adversarial weight perturbation step (0: off).", 0.0)
    awp_eps: float = _help("AWP perturbation bound, relative to weight size.", 1e-3)
    awp_start_epoch: float = _help("Epoch from which AWP is applied.", 1.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _help(
        "auto: bf16 where the GPU supports it, fp16 + GradScaler otherwise, none on CPU.", "auto"
    )
    # Pseudo-labelled external essays (output/pseudo/<student>/fold_<k>.parquet, from a teacher that never saw fold k)
    teacher: str = _help(
        "Students only: the model whose fold-k model labels the external essays for this student's fold k: one of "
        "train.models, or another student (a further round of pseudo-labels, as leak-free).", "")
    pseudo_weight: float = _help("Loss weight of a pseudo-labelled row relative to a labelled one (in a stage "
                                 "with_pseudo).", 0.5)
    # Evaluation and checkpoints
    eval_every: int = _help("Evaluate on the held-out fold every N optimizer steps (0: at each epoch end).", 0)
    keep_best: bool = _help("Keep the best-by-eval-QWK weights instead of the final ones.", False)
    checkpoint_every: int = _help("Save a resumable checkpoint every N optimizer steps (0: each epoch).", 0)
    # Seeds and the full fit
    seeds: list[int] = _help(
        "Seeds of this model: each fold trains once per seed; OOF and test predictions are their mean. Empty: the "
        "top-level seed, once. Each in [0, 4294967295]; the first keeps the plain fold_<k> folders, and the top-level "
        "seed then changes nothing of the model. Adding a seed trains only the new one.", factory=list)
    full_fit: Literal["off", "beside", "alone"] = _help(
        "After CV, a model per seed on every labelled row, stopped where CV stopped (keep_best: the folds' mean "
        "best share of the last stage). Inference uses it beside the fold models (one more member) or alone; "
        "OOF, thresholds and the ensemble stay the fold models'.", "off")

    @property
    def uses_pseudo(self) -> bool:
        """True for a student: a stage trains on the pseudo-labelled external essays."""
        return any(stage.rows == "pseudo" or stage.with_pseudo for stage in self.stages)


@dataclass
class TrainParams:
    models: dict[str, ModelParams] = _help(
        "Models trained on the labelled folds, keyed by name; each lists only what differs from the typed "
        "defaults (dvc.yaml: one train@<name> stage each). Default: one model, deberta-v3-large.",
        factory=lambda: {"deberta-v3-large": ModelParams()},
    )
    students: dict[str, ModelParams] = _help(
        "Models that also train on soft pseudo-labels of the external essays made by their `teacher` (dvc.yaml: "
        "pseudo_label@<name>, then student@<name>). Same keys as train.models.",
        factory=dict,
    )
    model: str = _help("Train only this model (dvc's per-model stages set it); empty: every model.", "")
    folds: list[int] = _help("Folds to train (by hand, e.g. a first try on fold 0); empty: every fold.", factory=list)
    step: Literal["all", "fit", "collect"] = _help(
        "all: train the folds, then write the model's oof.parquet once every fold exists; fit: train only; "
        "collect: only write oof.parquet and metrics.json (every fold must exist).",
        "all",
    )
    fold_workers: int = _help(
        "Folds trained at once, one process each. On CUDA each process gets its own GPU (CUDA_VISIBLE_DEVICES; "
        "0: one process per visible GPU), on CPU a share of the cores. 1: one fold after the other (and the "
        "way to run under accelerate launch / torchrun, where every process works on the same fold).",
        1,
    )
    device: Literal["auto", "cpu", "cuda"] = _help("Where to train; auto picks CUDA when present.", "auto")
    num_threads: int = _help("CPU threads for torch (0: torch's default).", 0)
    tracking: list[Literal["wandb", "mlflow"]] = _help(
        "Trackers that get every step's metrics beside dvclive (always on: output/live/<model>/<unit>/); each "
        "must be installed and configured (offline: WANDB_MODE=offline, MLFLOW_TRACKING_URI=file:...). Empty: "
        "dvclive alone.", factory=list)
    layer_stats: bool = _help(
        "At eval steps, log the gradient norm and the activations' mean and std per layer group (embeddings, "
        "four groups of encoder layers, head) to dvclive: where gradients vanish or activations blow up.", True)
    profile_steps: int = _help(
        "Profile this many optimizer steps of each trained unit with torch.profiler (after 1 wait and 1 warm-up "
        "step): output/profile/<model>/<unit>/trace.json (open in ui.perfetto.dev) and profile.txt. 0: off.", 0)
    lr_find: bool = _help(
        "Instead of training, run the LR range test on each asked-for model (train.model) on fold 0's training "
        "rows: loss vs learning rate in output/lr_find/<model>/ (lr_find.png, lr_find.csv, suggestion.json) and "
        "the suggested lr in the log. Trains and changes nothing else.", False)

    def __post_init__(self) -> None:
        bad = [n for n in {**self.models, **self.students} if not MODEL_NAME.fullmatch(n)]
        if bad:
            raise ParamsError(f"train: model name(s) {bad}: use letters, digits, '-' and '_' only (a name is a "
                              "dotted-key part and a folder name)")
        both = sorted(set(self.models) & set(self.students))
        if both:
            raise ParamsError(f"train: model name(s) {both} are both in train.models and train.students; every "
                              "model needs its own name")
        for name, spec in {**self.models, **self.students}.items():
            if spec.name and spec.name != name:
                raise ParamsError(f"train: model {name!r} says name: {spec.name!r}; a model's name is its key, drop "
                                  "the name key")
            spec.name = name
            group = "models" if name in self.models else "students"
            if spec.kind == "tfidf" and (group == "students" or spec.mlm.epochs > 0):
                raise ParamsError(f"train.{group}.{name}: kind tfidf trains on the labelled rows of its training folds "
                                  "alone; " + ("put it under train.models" if group == "students" else
                                               "mlm.epochs must stay 0 (it has no backbone)"))
            if not spec.stages:
                raise ParamsError(f"train.{group}.{name}.stages is empty: list at least one stage, e.g. stages: "
                                  "[{rows: all, epochs: 2}]")
            if spec.stages[-1].rows == "pseudo":
                raise ParamsError(f"train.{group}.{name}.stages: the last stage (whose weights are kept and "
                                  "evaluated) trains on pseudo-labels alone; end with a stage on labelled rows")
            if spec.windows > 1 and spec.window_overlap >= spec.max_length // 2:
                raise ParamsError(f"train.{group}.{name}.window_overlap={spec.window_overlap} must be below half of "
                                  f"max_length={spec.max_length} (windows would barely move)")
            schedule = spec.max_length_schedule
            if schedule and (spec.windows > 1 or not all(8 <= n <= spec.max_length for n in schedule)):
                raise ParamsError(f"train.{group}.{name}.max_length_schedule={schedule}: "
                                  + ("not with windows > 1 (the windows are max_length long)" if spec.windows > 1
                                     else f"every entry must be in [8, max_length={spec.max_length}]"))
            if spec.swa_start > 0 and (spec.keep_best or spec.ema_decay > 0):
                raise ParamsError(f"train.{group}.{name}: swa_start={spec.swa_start} averages the last weights, while "
                                  f"{'keep_best picks one' if spec.keep_best else 'ema_decay averages them too'}; "
                                  "use one of them")
            if len(set(spec.seeds)) != len(spec.seeds):
                raise ParamsError(f"train.{group}.{name}.seeds={spec.seeds} lists a seed twice; list each once")
            outside = [s for s in spec.seeds if not _in_range(s, RANGES[Params]["seed"])]
            if outside:
                raise ParamsError(f"'train.{group}.{name}.seeds' = {spec.seeds}: seed {outside[0]} is out of range: "
                                  f"allowed {RANGES[Params]['seed']} (like the top-level seed). Fix: list seeds "
                                  "within that range")
            if spec.effective_batch_size % spec.batch_size:
                raise ParamsError(f"train.{group}.{name}: effective_batch_size={spec.effective_batch_size} is not a "
                                  f"multiple of batch_size={spec.batch_size} (it is batch_size x processes x "
                                  "accumulation steps); change one of them")
        for name, spec in self.models.items():
            if spec.uses_pseudo or spec.teacher:
                raise ParamsError(
                    f"train.models.{name}: a stage on pseudo-labels (rows: pseudo or with_pseudo: true) or teacher="
                    f"{spec.teacher!r}: a model that trains on pseudo-labels goes under train.students (dvc runs it "
                    f"after pseudo_label@{name})")
        for name, spec in self.students.items():
            if not spec.uses_pseudo:
                raise ParamsError(f"train.students.{name}: no stage trains on the pseudo-labels; add one, e.g. stages: "
                                  "[{rows: pseudo, epochs: 1}, {rows: all, epochs: 2}], or a stage with with_pseudo: "
                                  "true (a model without pseudo-labels goes under train.models)")
            if spec.teacher in self.all_models and self.all_models[spec.teacher].kind != "transformer":
                raise ParamsError(f"train.students.{name}.teacher={spec.teacher!r} is a {self.all_models[spec.teacher].kind} "
                                  "model; a teacher must be a transformer (its fold models label the external essays)")
            if spec.teacher not in self.all_models:
                known = ", ".join(n for n in self.all_models if n != name) or "none"
                raise ParamsError(f"train.students.{name}.teacher={spec.teacher!r} is not in train.models or "
                                  f"train.students; the teacher must be another model ({known})")
        for name in self.students:
            chain = [name]
            while chain[-1] in self.students:
                chain.append(self.students[chain[-1]].teacher)
                if chain[-1] in chain[:-1]:
                    raise ParamsError(f"train.students.{name}: the teachers go round in a circle ("
                                      f"{' -> '.join(chain)}); the first round's teacher must be a model of "
                                      "train.models")
        if self.model and self.model not in self.all_models:
            raise ParamsError(f"train.model={self.model!r} is not in train.models or train.students "
                              f"({', '.join(self.all_models) or 'none'})")

    @property
    def all_models(self) -> dict[str, ModelParams]:
        """Every model by name: train.models first, then train.students (the order they train in)."""
        return {**self.models, **self.students}


@dataclass
class ThresholdsParams:
    polish: bool = _help("Polish the exact coordinate threshold search with scipy (kept only if it helps).", True)


@dataclass
class EnsembleParams:
    models: list[str] = _help(
        "Models to post-process (03 and 04); empty: every model of train.models and train.students.",
        factory=list,
    )
    target: Literal["auto", "all", "other"] | float = _help(
        "Rows every ensemble fit (blends, thresholds, stacker) and the method choice are for. auto: other-origin rows "
        "weigh w (chosen from target_weights by nested CV on other-origin QWK), corpus rows 1; all: every row alike; "
        "other: other-origin rows only; a number: that w, selected on the weighted rows.", "auto"
    )
    target_weights: list[float] = _help("Candidate weights of other-origin rows that target=auto chooses from.",
                                        factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    by_origin: bool = _help(
        "Origin-aware ensemble: each origin gets cut points fitted on its own rows and the stacker sees the origin "
        "(test essays are taken as other-origin: they get those cut points and that origin).", True)
    by_prompt: bool = _help(
        "Cut points per prompt cluster too (within the origin with by_origin), fitted nested; a cluster under 200 "
        "rows uses its origin's. Test essays get their cluster's by the prompt assigner (needs the train texts).",
        False)
    bootstrap_draws: int = _help("Bootstrap resamples (essays within folds) behind every interval and the "
                                 "method choice.", 1000)
    interval_level: float = _help("Two-sided level of the bootstrap intervals.", 0.9)
    selection: Literal["noise_aware", "best", "simplest"] = _help(
        "Which method 04 keeps (and how target=auto picks its weight). noise_aware: the best on the target's rows, "
        "unless others within its paired interval there do better on all rows; best: the best on the target's rows; "
        "simplest: the simplest the best does not beat beyond their paired interval (docs/ensembling.md).", "noise_aware")
    text_features: bool = _help("Give the LightGBM stacker text features beside model predictions.", True)
    prompt_features: bool = _help(
        "Give the LightGBM stacker the essay's recovered prompt cluster (one 0/1 column per cluster; test essays "
        "are assigned by a classifier fitted on the train clusters), so each prompt gets its own scale.", True
    )
    stacker_objective: Literal["regression", "qwk"] = _help(
        "LightGBM stacker objective: plain L2 regression or the QWK-shaped surrogate.", "regression"
    )
    n_trials: int = _help("Optuna trials per stacker tuning (nested: once per fold, once on all rows).", 8)
    prompt_mix: dict[str, float] = _help(
        "Target share per prompt name used to weight rows when fitting and scoring; empty: unweighted.",
        factory=dict,
    )

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) and not (math.isfinite(self.target) and self.target > 0):
            raise ParamsError(f"ensemble.target={self.target!r}: a weight of other-origin rows must be a positive "
                              "number (or auto, all, other)")
        if not self.target_weights or any(not math.isfinite(w) or w <= 0 for w in self.target_weights):
            raise ParamsError(f"ensemble.target_weights={self.target_weights}: give positive finite weights, e.g. "
                              "[1, 2, 4, 8, 16]")
        shares = self.prompt_mix
        if shares and (any(not math.isfinite(v) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0):
            raise ParamsError(f"ensemble.prompt_mix={shares}: shares must be >= 0 with a positive sum, e.g. "
                              "{Driverless cars: 0.3, Exploring Venus: 0.7}")


@dataclass
class InferParams:
    batch_tokens: int = _help("Token budget per inference batch on GPU (essays sorted by length; 4096 at most "
                              "on CPU).", 16384)
    artifacts: str = _help(
        "Root holding train/<model>/folds/fold_<k>/ and ensemble/artifacts/; empty: paths.output locally, "
        "<kaggle_root>/input/<artifacts_dataset> on Kaggle.", "")
    device: Literal["auto", "cpu", "cuda"] = _help("auto: every visible GPU (split by batches), else the CPU.", "auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = _help(
        "Autocast dtype; auto: fp16 on CUDA (T4 and P100 have no bf16), fp32 on CPU. Weights stay fp32.", "auto")
    kaggle_root: str = _help("Kaggle's root folder; when <kaggle_root>/input exists, Kaggle paths are used.", "/kaggle")
    competition_dataset: str = _help(
        "Folder of the competition files under <kaggle_root>/input.", "learning-agency-lab-automated-essay-scoring-2")
    artifacts_dataset: str = _help("Folder of the uploaded artifacts dataset under <kaggle_root>/input.",
                                   "aes-pipeline-artifacts")
    kaggle_user: str = _help("Kaggle user name written into the upload folder's metadata (make kaggle).",
                             "your-kaggle-username")
    spread_correction: bool = _help(
        "Stretch each model's fold-mean test prediction about its mean to the spread of a single fold model (the "
        "spread the thresholds and the stacker were fitted on), from the test predictions alone; needs 50+ essays.",
        False)
    expected_essays: int = _help("Essays in the hidden test, for the runtime estimate printed before the run.", 8000)
    time_limit_hours: float = _help("Kaggle's limit the runtime estimate is checked against.", 9.0)


@dataclass
class Params:
    seed: int = _help("Seed of every random choice in the pipeline.", 42)
    backbone: str = _help(
        "Default backbone: a Hugging Face name (microsoft/deberta-v3-large) or a local model folder.",
        "microsoft/deberta-v3-large",
    )
    paths: PathsParams = _help("Where stages read and write.", factory=PathsParams)
    prepare: PrepareParams = _help("Stage 00_prepare.", factory=PrepareParams)
    pseudo: PseudoParams = _help("Stage 01_pseudo_label (pseudo-labels for train.students).", factory=PseudoParams)
    train: TrainParams = _help("Stage 02_train.", factory=TrainParams)
    thresholds: ThresholdsParams = _help("Stage 03_oof_thresholds.", factory=ThresholdsParams)
    ensemble: EnsembleParams = _help("Stage 04_ensemble.", factory=EnsembleParams)
    infer: InferParams = _help("Stage 05_infer.", factory=InferParams)

    def __post_init__(self) -> None:
        n_folds = self.prepare.n_folds
        outside = sorted(k for k in set(self.train.folds) if not 0 <= k < n_folds)
        if outside:
            raise ParamsError(f"train.folds={self.train.folds}: fold(s) {outside} do not exist with "
                              f"prepare.n_folds={n_folds} (folds are 0 .. {n_folds - 1})")

    @property
    def input_dir(self) -> Path:
        return Path(self.paths.input)

    @property
    def output_dir(self) -> Path:
        return Path(self.paths.output)

    @property
    def metrics_dir(self) -> Path:
        return Path(self.paths.metrics)


# --------------------------------------------------------------------------------------------------
# Allowed ranges, checked at load (a value outside fails before any work) and shown by --help.
# "[a, b]" includes both ends, "(a, b)" neither; inf is unbounded.

RANGES: dict[type, dict[str, str]] = {
    PrepareParams: {"n_folds": "[2, inf)", "near_duplicate_threshold": "(0, 1]", "n_clusters": "[0, inf)",
                    "max_clusters": "[2, inf)"},
    MlmParams: {"epochs": "[0, inf)", "probability": "(0, 1)", "max_length": "[8, inf)", "batch_size": "[1, inf)",
                "lr": "(0, inf)", "held_out_share": "[0, 1)"},
    PseudoParams: {"regression_sigma": "(0, inf)"},
    StageParams: {"epochs": "(0, inf)"},
    TextModelParams: {"word_ngrams": "[0, 4]", "max_features": "[1, inf)", "min_df": "[1, inf)", "top_features": "[0, inf)",
                      "alpha": "(0, inf)", "rounds": "[1, inf)", "learning_rate": "(0, 1]", "num_leaves": "[2, inf)",
                      "feature_fraction": "(0, 1]"},
    ScorerParams: {"dropout": "[0, 1)", "n_dropout_samples": "[1, inf)", "reinit_layers": "[0, inf)",
                   "lora_r": "[0, inf)", "lora_alpha": "(0, inf)", "lora_dropout": "[0, 1)"},
    ModelParams: {
        "max_length": "[8, inf)", "token_cutout": "[0, 1)", "windows": "[1, inf)", "window_overlap": "[0, inf)",
        "random_crop": "[0, 1]",
        "batch_size": "[1, inf)", "batch_tokens": "[0, inf)", "effective_batch_size": "[1, inf)", "lr": "(0, inf)", "head_lr": "(0, inf)",
        "layerwise_lr_decay": "(0, 1]", "weight_decay": "[0, inf)", "warmup_ratio": "[0, 1)",
        "max_grad_norm": "[0, inf)", "ema_decay": "[0, 1)", "swa_start": "[0, 1)", "awp_lr": "[0, inf)", "awp_eps": "[0, inf)",
        "awp_start_epoch": "[0, inf)",
        "pseudo_weight": "(0, inf)", "eval_every": "[0, inf)", "checkpoint_every": "[0, inf)"},
    TrainParams: {"fold_workers": "[0, inf)", "num_threads": "[0, inf)", "profile_steps": "[0, inf)"},
    EnsembleParams: {"n_trials": "[1, inf)", "bootstrap_draws": "[10, inf)", "interval_level": "(0, 1)"},
    InferParams: {"batch_tokens": "[64, inf)", "expected_essays": "[1, inf)", "time_limit_hours": "(0, inf)"},
    Params: {"seed": "[0, 4294967295]"},  # numpy's seeds are 32-bit
}


def _in_range(value: float, spec: str) -> bool:
    low, high = (float(part) for part in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below


def _check_ranges(obj: Any, prefix: str) -> None:
    for name, spec in RANGES.get(type(obj), {}).items():
        value = getattr(obj, name)
        if not _in_range(value, spec):
            raise ParamsError(f"'{_join(prefix, name)}' = {value!r} is out of range: allowed {spec}. Fix: set it "
                              "within that range")


# --------------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and return it converted (int -> float, str -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping of {_type_name(tp)} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(f"'{key}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(f"'{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list ({_type_name(tp)}), got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping ({_type_name(tp)}), got {value!r}")
        _, v_tp = typing.get_args(tp)
        return {str(k): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(f"'{key}' must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ParamsError(f"'{key}': unsupported parameter type {tp!r}")  # pragma: no cover - schema bug


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"under '{prefix}'" if prefix else "at the top level"
        raise ParamsError(
            f"unknown key '{_join(prefix, unknown[0])}'; allowed keys {where}: {', '.join(sorted(fields))}"
        )
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ParamsError(f"missing required key '{_join(prefix, missing[0])}'")
    kwargs = {name: _convert(value, hints[name], _join(prefix, name)) for name, value in data.items()}
    try:
        built = cls(**kwargs)
    except FieldErrors as exc:
        raise ParamsError("; ".join(f"'{_join(prefix, name)}': {why}" for name, why in exc.problems.items())) from None
    _check_ranges(built, prefix)
    return built


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def to_dict(params: Any) -> Any:
    """Plain-data view of a params object (for saving the resolved config next to an artifact)."""
    return dataclasses.asdict(params)


# --------------------------------------------------------------------------------------------------
# Overrides


def _schema_type(cls: type, path: list[str]) -> Any:
    """Annotation of the dotted `path` inside dataclass `cls`, or ParamsError naming the allowed keys."""
    tp: Any = cls
    walked: list[str] = []
    for part in path:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                where = f"under '{'.'.join(walked)}'" if walked else "at the top level"
                raise ParamsError(
                    f"unknown key '{'.'.join([*walked, part])}'; allowed keys {where}: "
                    f"{', '.join(sorted(hints))}"
                )
            tp = hints[part]
        elif origin is list:
            if not part.isdigit():
                raise ParamsError(f"'{'.'.join(walked)}' is a list: index it with a number, got '{part}'")
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            raise ParamsError(f"'{'.'.join(walked)}' is a single value and has no key '{part}'")
        walked.append(part)
    return tp


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """'is not plain YAML (...)' for a tag safe_load refuses (`!!python/object/apply:...`), else 'is not valid YAML
    (...)', with yaml's reason and place on one line."""
    kind = "plain" if isinstance(exc, yaml.constructor.ConstructorError) else "valid"
    return f"is not {kind} YAML ({' '.join(str(exc).split())})"


def apply_override(data: dict[str, Any], override: str, parse: typing.Callable[[str], Any] = yaml.safe_load) -> None:
    """Apply one `dotted.key=value` override to raw params data in place (value parsed as YAML by `parse`)."""
    if "=" not in override:
        raise ParamsError(f"override '{override}' must look like dotted.key=value (e.g. prepare.n_folds=5)")
    key, raw = override.split("=", 1)
    key = key.strip()
    path = key.split(".")
    _schema_type(Params, path)
    try:
        value = parse(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{override}': its value {_yaml_problem(exc)}. Fix: quote or complete the value, "
                          "e.g. 'stages=[{rows: all, epochs: 2}]' (the shell needs the quotes)") from None
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ParamsError(f"'{key}': index {idx} is past the end of '{'.'.join(path[:i])}'")
            node = node[idx]
        else:
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ParamsError(f"'{key}': index {idx} is past the end of the list")
        node[idx] = value
    else:
        node[last] = value


def load_params(path: str | Path | None = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Read params (YAML file, or defaults when `path` is None), apply overrides, validate, return Params."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ParamsError(f"params file {path} not found; run from the repository root or pass --params")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not {_yaml_problem(exc).removeprefix('is not ')}. Nothing ran. Fix: correct "
                              "the place it names (params hold plain values: no tags such as !!python/...)") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ParamsError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    try:
        return _build(Params, data)
    except ParamsError as exc:
        source = f" (in {path} or the command-line overrides)" if path is not None else ""
        raise ParamsError(f"{exc}{source}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "required"


def describe(cls: type = Params, prefix: str = "") -> list[str]:
    """One line per leaf parameter: dotted key, type, default and help.

    A mapping of models (train.models, train.students) gets one line of its own, then the per-model keys
    once, as `train.models.<name>.KEY`.
    """
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if cls is ModelParams and f.name == "name":
            continue
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, key))
            continue
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            # No default shown: building the default models would check their scorer names, importing torch.
            lines.append(f"  {key} (mapping: name -> model): {f.metadata.get('help', '')}")
            if key == "train.models":
                lines.extend(describe(typing.get_args(tp)[1], f"{key}.<name>"))
            continue
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            default = [dataclasses.asdict(item) for item in _default(f)]
            lines.append(f"  {key} (list, default {default}): {f.metadata.get('help', '')}")
            lines.extend(describe(typing.get_args(tp)[0], f"{key}.<i>"))
            continue
        allowed = RANGES.get(cls, {}).get(f.name)
        kind = f"{_type_name(tp)} in {allowed}" if allowed else _type_name(tp)
        lines.append(f"  {key} ({kind}, default {_default(f)!r}): {f.metadata.get('help', '')}")
    return lines


EXAMPLES = """examples:
  python 02_train/run.py train.model=tiny-regression train.models.tiny-regression.lr=1e-5
                         one field of one model (train.students.<name>.KEY the same way)
  python 02_train/run.py train.model=tiny-regression train.folds=[0]   one fold only
  python 00_prepare/run.py prepare.n_folds=5 paths.input=/data/aes2 paths.output=runs/five-folds"""


def plain(params: Any) -> Any:
    """Plain data that `load_params` reads back into an equal Params (models without their name key)."""
    data = dataclasses.asdict(params)
    for group in ("models", "students"):
        for spec in data.get("train", {}).get(group, {}).values():
            spec.pop("name", None)
    return data


def parse_cli(argv: typing.Sequence[str] | None = None, description: str = "") -> Params:
    """Parse a stage's command line: `[--params FILE] [dotted.key=value ...]`."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameters (override with dotted.key=value):\n" + "\n".join(describe()) + "\n\n" + EXAMPLES,
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied on top of the file")
    args = parser.parse_args(argv)
    return load_params(args.params, args.overrides)


DVC_KEYS = ("seed", "backbone", "paths.input", "paths.output", "paths.metrics", "prepare.train_file",
            "prepare.test_file", "prepare.sample_submission_file", "prepare.external_file", "prepare.n_folds",
            "pseudo.regression_sigma", "train.models", "train.students", "thresholds", "ensemble.models", "infer")
"""The keys dvc.yaml interpolates or lists as params: a params file written for DVC keeps them at their default."""


def write_params_file(source: str | Path, target: str | Path, overrides: typing.Sequence[str] = ()) -> Params:
    """Validate `source` with `overrides` and write it to `target` as the run's params file.

    The file written is `source` with the overrides applied as edits, its comments kept, and every key at its
    typed default left out (but the keys dvc.yaml reads, DVC_KEYS): it loads back to the same Params and shows
    what this run chose. For a DVC run on other data: `paths.input` must hold the competition files and
    `paths.output` must be a folder inside the repository (DVC 3 tracks no output outside it).
    """
    from ruamel.yaml import YAML  # comes with dvc, which runs what this file is written for

    rt = YAML()
    rt.width = 110
    rt.indent(mapping=2, sequence=4, offset=2)
    data = rt.load(Path(source).read_text(encoding="utf-8")) or {}
    try:
        for override in overrides:
            _apply_as_edit(data, override, rt.load)
        params = _build(Params, data)
    except ParamsError as exc:
        raise ParamsError(f"{exc} (in {source} or the command-line overrides)") from None
    data_dir, prep = Path(params.paths.input), params.prepare
    names = [prep.train_file, prep.test_file, prep.sample_submission_file, prep.external_file]
    missing = [n for n in names if n and not (data_dir / n).is_file()]
    if missing:
        raise ParamsError(f"paths.input={params.paths.input}: {', '.join(missing)} not found there. Put the "
                          "competition files (and the PERSUADE corpus) in that folder, or run without the corpus: "
                          "make competition ... ARGS=prepare.external_file= (python -m common.config.config ... "
                          "prepare.external_file=)")
    root = Path(target).resolve().parent
    output = (root / params.paths.output).resolve()
    if output != root and root not in output.parents:
        raise ParamsError(f"paths.output={params.paths.output} is outside the repository ({root}); DVC keeps "
                          "outputs inside it: use a folder such as runs/first")
    for key in DVC_KEYS:
        _ensure_key(data, key, plain(params))
    _drop_defaults(data, Params, "")
    body = io.StringIO()
    rt.dump(data, body)
    Path(target).write_text(f"# Written from {source} with {' '.join(overrides) or 'no overrides'} (python -m "
                            "common.config.config): only what differs from the typed defaults (--help lists them)\n"
                            + body.getvalue(), encoding="utf-8")
    return params


def _ensure_key(data: Any, key: str, values: dict) -> None:
    """Add the dotted `key` to round-trip YAML `data` where it is missing, with its value in `values` (a whole
    section as an empty mapping)."""
    from ruamel.yaml.comments import CommentedMap

    node, cls, value = data, Params, values
    parts = key.split(".")
    for depth, part in enumerate(parts):
        value = value[part]
        if part not in node:
            leaf = depth == len(parts) - 1 and not dataclasses.is_dataclass(typing.get_type_hints(cls)[part])
            node[part] = value if leaf else CommentedMap()
            _place_added_key(node, part, cls)
        node, cls = node[part], typing.get_type_hints(cls)[part]


def _apply_as_edit(data: Any, override: str, parse: typing.Callable[[str], Any]) -> None:
    """`apply_override` on round-trip YAML data, a key it adds put in its place (`_place_added_key`)."""
    path = override.split("=", 1)[0].strip().split(".")
    known = []
    node: Any = data
    for part in path:
        known.append(isinstance(node, dict) and part in node)
        node = node.get(part) if isinstance(node, dict) else None
    from ruamel.yaml.comments import CommentedMap

    apply_override(data, override, parse=parse)
    node, cls = data, Params
    for part, existed in zip(path, known, strict=True):
        if not dataclasses.is_dataclass(cls) or not isinstance(node, dict):
            break
        if type(node[part]) is dict:  # a mapping apply_override made on the way
            node[part] = CommentedMap(node[part])
        if not existed:
            _place_added_key(node, part, cls)
        node, cls = node[part], typing.get_type_hints(cls).get(part)


def _place_added_key(node: Any, key: str, cls: type) -> None:
    """Move `key`, just added at the end of the mapping `node` (of dataclass `cls`), to its place in the schema's
    order; when it stays last, the blank and comment lines after the former last key (introducing what comes
    next) follow it instead."""
    order = [f.name for f in dataclasses.fields(cls)]
    others = [k for k in node if k != key]
    position = sum(1 for k in others if k in order and order.index(k) < order.index(key))
    if position < len(others):
        node.insert(position, key, node.pop(key))
        return
    if not others or not hasattr(node, "ca") or isinstance(node[others[-1]], dict):
        return
    token = node.ca.items.get(others[-1], [None] * 4)[2]
    if token is not None and "\n" in token.value:
        end_of_line, rest = token.value.split("\n", 1)
        if rest:
            token.value = end_of_line + "\n"
            node.ca.items[key] = [None, None, type(token)("\n" + rest, token.start_mark), None]


def _drop_defaults(node: Any, cls: type, prefix: str) -> str:
    """Remove from the mapping `node` (of dataclass `cls` at `prefix`) every key at its typed default, except
    DVC_KEYS and their parents; the comments that followed a removed key go before the next key kept.

    Returns the comment lines still to place (a removed key was the mapping's last): its parent places them.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    carry = ""
    for key in list(node):
        path = _join(prefix, key)
        value, tp = node[key], hints[key]
        kept = path in DVC_KEYS or any(k.startswith(path + ".") for k in DVC_KEYS)
        inner = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            pending = _drop_defaults(value, tp, path)
            drop = not value and not kept
        elif dataclasses.is_dataclass(inner) and isinstance(value, dict):  # models by name: each entry stays
            pending = ""
            for name, spec in value.items():
                if pending:
                    _comment_before(value, name, pending)
                pending = _drop_defaults(spec, inner, f"{path}.{name}") if isinstance(spec, dict) else ""
            drop = False
        else:
            pending = ""
            drop = not kept and _convert(value, tp, path) == _default(fields[key])
        if drop:
            carry += pending + _comments_after(node, key)
            del node[key]
            continue
        if carry:
            _comment_before(node, key, carry)
            carry = ""
        carry = pending
    return carry


def _comments_after(node: Any, key: str) -> str:
    """The full comment lines after `key`'s value (which introduce what follows), without its end-of-line one."""
    value = node[key]
    if isinstance(value, dict) and value:
        return _comments_after(value, list(value)[-1])
    token = getattr(node, "ca", None) and node.ca.items.get(key, [None] * 4)[2]
    if token is None:
        return ""
    lines = token.value.split("\n")[1:-1]  # after the end-of-line part, up to the last newline
    return "".join(line.strip() + "\n" for line in lines if not line.strip() or line.strip().startswith("#"))


def _comment_before(node: Any, key: str, lines: str) -> None:
    """Put comment `lines` ("# ..." each) before `key` of the mapping `node`."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    indent = node.lc.col if getattr(node, "lc", None) is not None and node.lc.col is not None else 0
    before = node.ca.items.setdefault(key, [None, [], None, None])
    before[1] = (before[1] or []) + [CommentToken(line + "\n", CommentMark(indent))
                                     for line in lines.splitlines()]


def main(argv: typing.Sequence[str] | None = None) -> int:
    """python -m common.config.config --from FILE [--to params.yaml] [dotted.key=value ...]"""
    parser = argparse.ArgumentParser(description="Write a validated params file for a run (make competition).")
    parser.add_argument("--from", dest="source", required=True, help="params file to start from")
    parser.add_argument("--to", dest="target", default="params.yaml", help="file to write (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. paths.input=/data/aes2")
    args = parser.parse_args(argv)
    try:
        params = write_params_file(args.source, args.target, args.overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.target}: {len(params.train.all_models)} model(s) ({', '.join(params.train.all_models)}), "
          f"data {params.paths.input}, outputs {params.paths.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
