"""One model's params: an entry of train.models or train.students (ModelParams) and its parts.

The architecture (ScorerParams: pooling, head, loss, how the backbone is tuned), the training stages (StageParams),
masked-language-model adaptation (MlmParams) and the classical text model's settings (TextModelParams). Each
field has a help string and, for a number, its allowed range (common.config.fields.param); the checks that span
models (a student's teacher, names) are TrainParams' (common.config.params).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config.fields import FieldErrors, in_range, param, ranges


@dataclass
class MlmParams:
    """Masked-language-model domain adaptation of one model's backbone before it is fine-tuned."""

    epochs: float = param("Epochs of MLM over the train, test and external essays before fine-tuning (0: off). "
                          "The adapted backbone is cached under <paths.output>/mlm/<fingerprint>/, so models "
                          "with the same backbone and MLM settings share one run.", 0.0, range="[0, inf)")
    probability: float = param("Share of tokens masked.", 0.15, range="(0, 1)")
    whole_word: bool = param("Mask whole words instead of single tokens.", False)
    max_length: int = param("Tokens per MLM chunk (long essays are split into chunks).", 512,
                            range="[8, inf)")
    batch_size: int = param("Chunks per MLM batch.", 16, range="[1, inf)")
    lr: float = param("MLM learning rate (deberta-v3: ~5e-5; the demo's tiny random backbone needs ~1e-3).", 5e-5,
                      range="(0, inf)")
    held_out_share: float = param("Share of essays held out to report MLM loss before and after.", 0.05,
                                  range="[0, 1)")


@dataclass(kw_only=True)
class ScorerParams:
    """A model's architecture, the part of common.models.ScorerConfig that params choose.

    Pooling, head and loss are names in the registries of common/models (a new one is one class under its
    registry's decorator: common/models/parts/registry.py), checked here when the params load.
    """

    head: str = param("Prediction head, by its name in HEADS (common/models/parts/heads.py), e.g. regression, "
                      "classification, ordinal; a wrong name lists every choice.", "regression")
    pooling: str = param("Pooling of the token states, by its name in POOLINGS (common/models/parts/pooling.py), e.g. mean, "
                         "attention, weighted_layer.", "mean")
    loss: str = param("Training loss, by its name in LOSSES (common/models/parts/losses.py), e.g. mse, smooth_l1; empty: "
                      "the head's default_loss (regression mse, classification cross_entropy, ordinal "
                      "cumulative_bce).", "")
    dropout: float = param("Dropout before the head.", 0.1, range="[0, 1)")
    n_dropout_samples: int = param("Multi-sample dropout: head passes averaged in training.", 1,
                                   range="[1, inf)")
    reinit_layers: int = param("Re-initialise the top N encoder layers with the backbone's own init.", 0,
                               range="[0, inf)")
    freeze_embeddings: bool = param("Freeze the embedding layer.", False)
    gradient_checkpointing: bool = param("Trade compute for memory in the backbone (non-reentrant).", False)
    lora_r: int = param("LoRA rank (peft); 0 fine-tunes every weight.", 0, range="[0, inf)")
    lora_alpha: int = param("LoRA alpha.", 16, range="(0, inf)")
    lora_dropout: float = param("LoRA dropout.", 0.05, range="[0, 1)")
    lora_target_modules: list[str] = param("Modules LoRA adapts (deberta-v3's attention projections; BERT: query, "
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
                    for name, spec in ranges(ScorerParams).items() if not in_range(getattr(self, name), spec)}
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

    rows: Literal["all", "persuade", "other", "pseudo"] = param(
        "Labelled rows of the training folds by origin (the held-out fold never), or 'pseudo': only the "
        "pseudo-labelled external essays (students; soft labels from a teacher that never saw the held-out fold).",
        "all")
    epochs: float = param("Epochs of this stage (a fraction stops part-way through one).", 2.0,
                          range="(0, inf)")
    with_pseudo: bool = param("Students: the pseudo-labelled essays join this stage's rows, each weighing "
                              "pseudo_weight.", False)


@dataclass
class TextModelParams:
    """A classical text model (kind: tfidf): TF-IDF word and char n-grams plus essay counts -> ridge or LightGBM
    (common/models/text_model.py). Every fit (vocabulary, idf, count scaling, learner) sees the training folds only."""

    learner: Literal["ridge", "lightgbm"] = param(
        "ridge: a linear fit on every column (seconds); lightgbm: gradient-boosted trees (minutes at 17k essays).",
        "ridge")
    word_ngrams: int = param("Word n-grams 1..N (lower-cased); 0: no word block.", 2, range="[0, 4]")
    char_ngrams: list[int] = param("char_wb n-grams [min, max] (inside word boundaries); empty: no char block.",
                                   factory=lambda: [3, 5])
    max_features: int = param("N-grams kept per block: the most frequent in the training rows.", 50000,
                              range="[1, inf)")
    min_df: int = param("Fewest training essays an n-gram must occur in to be kept.", 2, range="[1, inf)")
    counts: bool = param("Add the essay counts of common.prepare.text_features (length, structure, spelling, readability), "
                         "standardised on the training rows.", True)
    alpha: float = param("Ridge: L2 penalty.", 1.0, range="(0, inf)")
    top_features: int = param("LightGBM: columns it sees, the most correlated with the score on the training rows "
                              "(trees over 100k sparse columns take minutes a fold); 0: all.", 2000,
                              range="[0, inf)")
    rounds: int = param("LightGBM: boosting rounds (fixed: the held-out fold never stops the fit).", 600,
                        range="[1, inf)")
    learning_rate: float = param("LightGBM: learning rate.", 0.05, range="(0, 1]")
    num_leaves: int = param("LightGBM: leaves per tree.", 15, range="[2, inf)")
    feature_fraction: float = param("LightGBM: share of columns each tree samples.", 0.3, range="(0, 1]")

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

    name: str = param("Set from the model's key in train.models / train.students (not written in params).", "")
    kind: Literal["transformer", "tfidf"] = param(
        "transformer: a fine-tuned backbone (every key below); tfidf: a classical text model with no backbone, set by "
        "`tfidf` (with seeds and full_fit; the transformer keys are not used).", "transformer")
    tfidf: TextModelParams = param("kind: tfidf only: the text model's features and learner.",
                                   factory=TextModelParams)
    backbone: str = param("Hugging Face name or local folder of the backbone; empty: the top-level backbone.", "")
    mlm: MlmParams = param("MLM domain adaptation of the backbone before fine-tuning (off unless mlm.epochs > 0).",
                           factory=MlmParams)
    scorer: ScorerParams = param("The model's architecture: pooling, head, loss, how the backbone is tuned.",
                                 factory=ScorerParams)
    # Tokenisation
    max_length: int = param("Tokens kept per essay (truncation beyond).", 1024, range="[8, inf)")
    add_newline_tokens: bool = param("Add newline tokens (DeBERTa drops newlines) and resize embeddings.", True)
    padding_side: Literal["right", "left"] = param("Side padding goes on.", "right")
    truncation_side: Literal["right", "left", "head_tail"] = param(
        "What a long essay keeps: right: its beginning; left: its end; head_tail: its first quarter of max_length "
        "and its end (training and inference alike).", "right")
    add_special_tokens: bool = param("Add [CLS]/[SEP] (or the tokenizer's equivalents).", True)
    windows: int = param(
        "Long essays: up to this many windows of max_length tokens (each between the special tokens, overlapping "
        "by window_overlap), scored each and their logits averaged, in training and inference alike; what does not "
        "fit them is cut by truncation_side. 1: one window. Memory grows with it: lower batch_size.", 1,
        range="[1, inf)")
    window_overlap: int = param("Essay tokens consecutive windows share (windows > 1).", 64, range="[0, inf)")
    token_cutout: float = param("Augmentation: share of each training batch's real tokens replaced by the mask token "
                                "(special tokens kept; evaluation and inference see whole essays). 0: off.", 0.0,
                                range="[0, 1)")
    random_crop: float = param("Augmentation: share of training essays cut, each time drawn, to a random contiguous "
                               "span of half to all of their tokens (special tokens kept). 0: off.", 0.0,
                               range="[0, 1]")
    max_length_schedule: list[int] = param(
        "Progressive max_length: in epoch e of each stage, training essays are cut to entry e (the last entry from "
        "then on) as truncation_side cuts; evaluation and inference use max_length. Empty: max_length throughout.",
        factory=list)
    # Optimisation
    stages: list[StageParams] = param(
        "Training stages in order, each with a fresh optimizer and schedule: rows and epochs (e.g. persuade rows, "
        "then other rows; a student's pseudo-labelled essays first). Evaluation and keep_best follow the last.",
        factory=lambda: [StageParams()])
    batch_size: int = param("Essays per batch per device.", 8, range="[1, inf)")
    batch_tokens: int = param(
        "Training batches by a budget of tokens instead: essays of similar length, essays x longest <= batch_tokens "
        "(short essays in big batches); accumulation stays effective_batch_size / batch_size micro-batches a step. "
        "0: batch_size essays.", 0, range="[0, inf)")
    effective_batch_size: int = param(
        "Essays per optimizer step across devices and accumulation steps (a multiple of batch_size).", 16,
        range="[1, inf)"
    )
    lr: float = param("Learning rate of the top encoder layer (lower layers: layerwise_lr_decay); the rate the "
                      "training logs show as lr.", 2e-5, range="(0, inf)")
    head_lr: float = param("Learning rate of pooling and head.", 1e-3, range="(0, inf)")
    layerwise_lr_decay: float = param("LR multiplier per encoder layer going down (1.0: none).", 0.9,
                                      range="(0, 1]")
    weight_decay: float = param("AdamW weight decay (not on biases and norms).", 0.01, range="[0, inf)")
    scheduler: Literal["linear", "cosine", "constant"] = param("LR schedule after warmup.", "cosine")
    warmup_ratio: float = param("Share of steps spent warming up.", 0.1, range="[0, 1)")
    max_grad_norm: float = param("Gradient clipping norm (0: off).", 1.0, range="[0, inf)")
    ema_decay: float = param("EMA of weights used for evaluation and saving (0: off).", 0.0, range="[0, 1)")
    swa_start: float = param(
        "SWA: from this share of the last stage's steps on, the weights after every optimizer step are averaged "
        "(torch.optim.swa_utils.AveragedModel); the average is the model evaluated at the end and saved. 0: off.",
        0.0, range="[0, 1)")
    awp_lr: float = param("Adversarial weight perturbation step (0: off).", 0.0, range="[0, inf)")
    awp_eps: float = param("AWP perturbation bound, relative to weight size.", 1e-3, range="[0, inf)")
    awp_start_epoch: float = param("Epoch from which AWP is applied.", 1.0, range="[0, inf)")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = param(
        "auto: bf16 where the GPU supports it, fp16 + GradScaler otherwise, none on CPU.", "auto"
    )
    # Pseudo-labelled external essays (output/pseudo/<student>/fold_<k>.parquet, from a teacher that never saw fold k)
    teacher: str = param(
        "Students only: the model whose fold-k model labels the external essays for this student's fold k: one of "
        "train.models, or another student (a further round of pseudo-labels, as leak-free).", "")
    pseudo_weight: float = param("Loss weight of a pseudo-labelled row relative to a labelled one (in a stage "
                                 "with_pseudo).", 0.5, range="(0, inf)")
    # Evaluation and checkpoints
    eval_every: int = param("Evaluate on the held-out fold every N optimizer steps (0: at each epoch end).", 0,
                            range="[0, inf)")
    keep_best: bool = param("Keep the best-by-eval-QWK weights instead of the final ones.", False)
    checkpoint_every: int = param("Save a resumable checkpoint every N optimizer steps (0: each epoch).", 0,
                                  range="[0, inf)")
    # Seeds and the full fit
    seeds: list[int] = param(
        "Seeds of this model: each fold trains once per seed; OOF and test predictions are their mean. Empty: the "
        "top-level seed, once. Each in [0, 4294967295]; the first keeps the plain fold_<k> folders, and the top-level "
        "seed then changes nothing of the model. Adding a seed trains only the new one.", factory=list)
    full_fit: Literal["off", "beside", "alone"] = param(
        "After CV, a model per seed on every labelled row, stopped where CV stopped (keep_best: the folds' mean "
        "best share of the last stage). Inference uses it beside the fold models (one more member) or alone; "
        "OOF, thresholds and the ensemble stay the fold models'.", "off")

    @property
    def uses_pseudo(self) -> bool:
        """True for a student: a stage trains on the pseudo-labelled external essays."""
        return any(stage.rows == "pseudo" or stage.with_pseudo for stage in self.stages)
