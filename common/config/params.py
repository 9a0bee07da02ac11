"""The pipeline's params (Params): the top-level keys and each stage's section (prepare, pseudo, train, ...).

Every setting is a typed field with a help string and, for a number, its allowed range
(common.config.fields.param); one model's params (an entry of train.models) are in common.config.model_params.
`__post_init__` checks what spans fields: TrainParams collects every problem of its models at once
(FieldErrors, keyed by the path under train), which `load_params` reports with the full key path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.config.fields import FieldErrors, ParamsError, in_range, param, ranges
from common.config.model_params import ModelParams

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class PathsParams:
    input: str = param("Folder holding the competition CSVs (train, test, sample_submission, corpus).", "input")
    output: str = param("Folder every stage writes its artifacts under.", "output")
    metrics: str = param(
        "Git-tracked folder of each stage's headline figures (prepare.json, train/<model>.json, thresholds.json, "
        "ensemble.json), which `dvc exp show` compares across experiments; the full metrics stay in paths.output.",
        "metrics")


@dataclass
class PrepareParams:
    train_file: str = param("Train CSV inside paths.input: essay_id, full_text, score.", "train.csv")
    test_file: str = param("Test CSV inside paths.input: essay_id, full_text.", "test.csv")
    sample_submission_file: str = param(
        "Sample submission CSV inside paths.input: essay_id, score.", "sample_submission.csv"
    )
    external_file: str = param(
        "External PERSUADE-style corpus CSV inside paths.input; empty string when there is none.",
        "persuade_2.0_human_scores_demo_id_github.csv",
    )
    n_folds: int = param("Number of cross-validation folds.", 4, range="[2, inf)")
    group_by: Literal["duplicates", "prompt"] = param(
        "'duplicates': folds keep duplicate groups together and balance score, prompt and origin; "
        "'prompt': each fold holds out whole prompt clusters.",
        "duplicates",
    )
    near_duplicate_threshold: float = param(
        "Cosine similarity (word TF-IDF) at or above which two essays count as near-duplicates.", 0.9,
        range="(0, 1]"
    )
    n_clusters: int = param("Number of prompt clusters; 0 chooses it from the data.", 0, range="[0, inf)")
    max_clusters: int = param("Largest number of clusters tried when n_clusters is 0.", 20, range="[2, inf)")


@dataclass
class PseudoParams:
    regression_sigma: float = param(
        "Spread (in score points) of the normal distribution a regression teacher's prediction becomes.", 0.6,
        range="(0, inf)")


def _add(problems: dict[str, str], key: str, why: str) -> None:
    """Record problem `why` under `key`, after any already there."""
    problems[key] = f"{problems[key]}; {why}" if key in problems else why


def _model_problems(name: str, spec: ModelParams, student: bool) -> dict[str, str]:
    """What is wrong with model `name`'s settings taken together, by field (`window_overlap`, `stages`, ...);
    `student`: it is under train.students."""
    problems: dict[str, str] = {}
    if spec.name and spec.name != name:
        problems["name"] = f"model {name!r} says name: {spec.name!r}; a model's name is its key, drop the name key"
    if spec.kind == "tfidf" and (student or spec.mlm.epochs > 0):
        fix = "put it under train.models" if student else "mlm.epochs must stay 0 (it has no backbone)"
        problems["kind"] = f"tfidf trains on the labelled rows of its training folds alone; {fix}"
    if not spec.stages:
        problems["stages"] = "empty: list at least one stage, e.g. stages: [{rows: all, epochs: 2}]"
    elif spec.stages[-1].rows == "pseudo":
        problems["stages"] = ("the last stage (whose weights are kept and evaluated) trains on pseudo-labels "
                              "alone; end with a stage on labelled rows")
    if spec.windows > 1 and spec.window_overlap >= spec.max_length // 2:
        problems["window_overlap"] = (f"{spec.window_overlap} must be below half of max_length={spec.max_length} "
                                      "(windows would barely move)")
    schedule = spec.max_length_schedule
    if schedule and (spec.windows > 1 or not all(8 <= n <= spec.max_length for n in schedule)):
        problems["max_length_schedule"] = f"{schedule}: " + (
            "not with windows > 1 (the windows are max_length long)" if spec.windows > 1
            else f"every entry must be in [8, max_length={spec.max_length}]")
    if spec.swa_start > 0 and (spec.keep_best or spec.ema_decay > 0):
        other = "keep_best picks one" if spec.keep_best else "ema_decay averages them too"
        problems["swa_start"] = f"{spec.swa_start} averages the last weights, while {other}; use one of them"
    if len(set(spec.seeds)) != len(spec.seeds):
        problems["seeds"] = f"{spec.seeds} lists a seed twice; list each once"
    seed_range = ranges(Params)["seed"]
    outside = [s for s in spec.seeds if not in_range(s, seed_range)]
    if outside:
        _add(problems, "seeds", f"{spec.seeds}: seed {outside[0]} is out of range: allowed {seed_range} (like the "
                                "top-level seed). Fix: list seeds within that range")
    if spec.effective_batch_size % spec.batch_size:
        problems["effective_batch_size"] = (f"{spec.effective_batch_size} is not a multiple of batch_size="
                                            f"{spec.batch_size} (it is batch_size x processes x accumulation "
                                            "steps); change one of them")
    return problems


@dataclass
class TrainParams:
    models: dict[str, ModelParams] = param(
        "Models trained on the labelled folds, keyed by name; each lists only what differs from the typed "
        "defaults (dvc.yaml: one train@<name> stage each). Default: one model, deberta-v3-large.",
        factory=lambda: {"deberta-v3-large": ModelParams()},
    )
    students: dict[str, ModelParams] = param(
        "Models that also train on soft pseudo-labels of the external essays made by their `teacher` (dvc.yaml: "
        "pseudo_label@<name>, then student@<name>). Same keys as train.models.",
        factory=dict,
    )
    model: str = param("Train only this model (dvc's per-model stages set it); empty: every model.", "")
    folds: list[int] = param("Folds to train (by hand, e.g. a first try on fold 0); empty: every fold.", factory=list)
    step: Literal["all", "fit", "collect"] = param(
        "all: train the folds, then write the model's oof.parquet once every fold exists; fit: train only; "
        "collect: only write oof.parquet and metrics.json (every fold must exist).",
        "all",
    )
    fold_workers: int = param(
        "Folds trained at once, one process each. On CUDA each process gets its own GPU (CUDA_VISIBLE_DEVICES; "
        "0: one process per visible GPU), on CPU a share of the cores. 1: one fold after the other (and the "
        "way to run under accelerate launch / torchrun, where every process works on the same fold).",
        1, range="[0, inf)",
    )
    device: Literal["auto", "cpu", "cuda"] = param("Where to train; auto picks CUDA when present.", "auto")
    num_threads: int = param("CPU threads for torch (0: torch's default).", 0, range="[0, inf)")
    tracking: list[Literal["wandb", "mlflow"]] = param(
        "Trackers that get every step's metrics beside dvclive (always on: output/live/<model>/<unit>/); each "
        "must be installed and configured (offline: WANDB_MODE=offline, MLFLOW_TRACKING_URI=file:...). Empty: "
        "dvclive alone.", factory=list)
    layer_stats: bool = param(
        "At eval steps, log the gradient norm and the activations' mean and std per layer group (embeddings, "
        "four groups of encoder layers, head) to dvclive: where gradients vanish or activations blow up.", True)
    profile_steps: int = param(
        "Profile this many optimizer steps of each trained unit with torch.profiler (after 1 wait and 1 warm-up "
        "step): output/profile/<model>/<unit>/trace.json (open in ui.perfetto.dev) and profile.txt. 0: off.", 0,
        range="[0, inf)")
    lr_find: bool = param(
        "Instead of training, run the LR range test on each asked-for model (train.model) on fold 0's training "
        "rows: loss vs learning rate in output/lr_find/<model>/ (lr_find.png, lr_find.csv, suggestion.json) and "
        "the suggested lr in the log. Trains and changes nothing else.", False)

    def __post_init__(self) -> None:
        problems = self.problems()
        for name, spec in self.all_models.items():
            spec.name = name
        if problems:
            raise FieldErrors(type(self).__name__, problems)

    def problems(self) -> dict[str, str]:
        """What is wrong, by key path under train (`models.x.window_overlap`): model names, each model's settings
        taken together (`_model_problems`), which group a model belongs in, a student's teacher, train.model."""
        problems: dict[str, str] = {}
        for group, models in (("models", self.models), ("students", self.students)):
            bad = [n for n in models if not MODEL_NAME.fullmatch(n)]
            if bad:
                _add(problems, group, f"model name(s) {bad}: use letters, digits, '-' and '_' only (a name is a "
                                      "dotted-key part and a folder name)")
        both = sorted(set(self.models) & set(self.students))
        if both:
            _add(problems, "students", f"model name(s) {both} are both in train.models and train.students; every "
                                       "model needs its own name")
        for group, models in (("models", self.models), ("students", self.students)):
            for name, spec in models.items():
                for key, why in _model_problems(name, spec, student=group == "students").items():
                    _add(problems, f"{group}.{name}.{key}", why)
        for name, spec in self.models.items():
            if spec.uses_pseudo or spec.teacher:
                _add(problems, f"models.{name}.{'teacher' if spec.teacher else 'stages'}",
                     f"a stage on pseudo-labels (rows: pseudo or with_pseudo: true) or teacher={spec.teacher!r}: "
                     f"a model that trains on pseudo-labels goes under train.students (dvc runs it after "
                     f"pseudo_label@{name})")
        for name, spec in self.students.items():
            at = f"students.{name}"
            if not spec.uses_pseudo:
                _add(problems, f"{at}.stages", "no stage trains on the pseudo-labels; add one, e.g. stages: "
                     "[{rows: pseudo, epochs: 1}, {rows: all, epochs: 2}], or a stage with with_pseudo: true (a "
                     "model without pseudo-labels goes under train.models)")
            teacher = self.all_models.get(spec.teacher)
            if teacher is None:
                known = ", ".join(n for n in self.all_models if n != name) or "none"
                _add(problems, f"{at}.teacher", f"{spec.teacher!r} is not in train.models or train.students; the "
                     f"teacher must be another model ({known})")
            elif teacher.kind != "transformer":
                _add(problems, f"{at}.teacher", f"{spec.teacher!r} is a {teacher.kind} model; a teacher must be a "
                     "transformer (its fold models label the external essays)")
            chain = [name]
            while chain[-1] in self.students and chain[-1] not in chain[:-1]:
                chain.append(self.students[chain[-1]].teacher)
            if chain[-1] in chain[:-1]:
                _add(problems, f"{at}.teacher", f"the teachers go round in a circle ({' -> '.join(chain)}); the "
                     "first round's teacher must be a model of train.models")
        if self.model and self.model not in self.all_models:
            problems["model"] = (f"{self.model!r} is not in train.models or train.students "
                                 f"({', '.join(self.all_models) or 'none'})")
        return problems

    @property
    def all_models(self) -> dict[str, ModelParams]:
        """Every model by name: train.models first, then train.students (the order they train in)."""
        return {**self.models, **self.students}


@dataclass
class ThresholdsParams:
    polish: bool = param("Polish the exact coordinate threshold search with scipy (kept only if it helps).", True)


@dataclass
class EnsembleParams:
    models: list[str] = param(
        "Models to post-process (03 and 04); empty: every model of train.models and train.students.",
        factory=list,
    )
    target: Literal["auto", "all", "other"] | float = param(
        "Rows every ensemble fit (blends, thresholds, stacker) and the method choice are for. auto: other-origin rows "
        "weigh w (chosen from target_weights by nested CV on other-origin QWK), corpus rows 1; all: every row alike; "
        "other: other-origin rows only; a number: that w, selected on the weighted rows.", "auto"
    )
    target_weights: list[float] = param("Candidate weights of other-origin rows that target=auto chooses from.",
                                        factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    by_origin: bool = param(
        "Origin-aware ensemble: each origin gets cut points fitted on its own rows and the stacker sees the origin "
        "(test essays are taken as other-origin: they get those cut points and that origin).", True)
    by_prompt: bool = param(
        "Cut points per prompt cluster too (within the origin with by_origin), fitted nested; a cluster under 200 "
        "rows uses its origin's. Test essays get their cluster's by the prompt assigner (needs the train texts).",
        False)
    bootstrap_draws: int = param("Bootstrap resamples (essays within folds) behind every interval and the "
                                 "method choice.", 1000, range="[10, inf)")
    interval_level: float = param("Two-sided level of the bootstrap intervals.", 0.9, range="(0, 1)")
    selection: Literal["noise_aware", "best", "simplest"] = param(
        "Which method 04 keeps (and how target=auto picks its weight). noise_aware: the best on the target's rows, "
        "unless others within its paired interval there do better on all rows; best: the best on the target's rows; "
        "simplest: the simplest the best does not beat beyond their paired interval (docs/ensembling.md).", "noise_aware")
    text_features: bool = param("Give the LightGBM stacker text features beside model predictions.", True)
    prompt_features: bool = param(
        "Give the LightGBM stacker the essay's recovered prompt cluster (one 0/1 column per cluster; test essays "
        "are assigned by a classifier fitted on the train clusters), so each prompt gets its own scale.", True
    )
    stacker_objective: Literal["regression", "qwk"] = param(
        "LightGBM stacker objective: plain L2 regression or the QWK-shaped surrogate.", "regression"
    )
    n_trials: int = param("Optuna trials per stacker tuning (nested: once per fold, once on all rows).", 8,
                          range="[1, inf)")
    prompt_mix: dict[str, float] = param(
        "Target share per prompt name used to weight rows when fitting and scoring; empty: unweighted.",
        factory=dict,
    )

    def __post_init__(self) -> None:
        problems = {}
        if not isinstance(self.target, str) and not (math.isfinite(self.target) and self.target > 0):
            problems["target"] = (f"{self.target!r}: a weight of other-origin rows must be a positive number (or "
                                  "auto, all, other)")
        if not self.target_weights or any(not math.isfinite(w) or w <= 0 for w in self.target_weights):
            problems["target_weights"] = f"{self.target_weights}: give positive finite weights, e.g. [1, 2, 4, 8, 16]"
        shares = self.prompt_mix
        if shares and (any(not math.isfinite(v) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0):
            problems["prompt_mix"] = (f"{shares}: shares must be >= 0 with a positive sum, e.g. "
                                      "{Driverless cars: 0.3, Exploring Venus: 0.7}")
        if problems:  # every mistake at once, each under its key path (load_params)
            raise FieldErrors(type(self).__name__, problems)


@dataclass
class InferParams:
    batch_tokens: int = param("Token budget per inference batch on GPU (essays sorted by length; 4096 at most "
                              "on CPU).", 16384, range="[64, inf)")
    artifacts: str = param(
        "Root holding train/<model>/folds/fold_<k>/ and ensemble/artifacts/; empty: paths.output locally, "
        "<kaggle_root>/input/<artifacts_dataset> on Kaggle.", "")
    device: Literal["auto", "cpu", "cuda"] = param("auto: every visible GPU (split by batches), else the CPU.", "auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = param(
        "Autocast dtype; auto: fp16 on CUDA (T4 and P100 have no bf16), fp32 on CPU. Weights stay fp32.", "auto")
    kaggle_root: str = param("Kaggle's root folder; when <kaggle_root>/input exists, Kaggle paths are used.", "/kaggle")
    competition_dataset: str = param(
        "Folder of the competition files under <kaggle_root>/input.", "learning-agency-lab-automated-essay-scoring-2")
    artifacts_dataset: str = param("Folder of the uploaded artifacts dataset under <kaggle_root>/input.",
                                   "aes-pipeline-artifacts")
    kaggle_user: str = param("Kaggle user name written into the upload folder's metadata (make kaggle).",
                             "your-kaggle-username")
    spread_correction: bool = param(
        "Stretch each model's fold-mean test prediction about its mean to the spread of a single fold model (the "
        "spread the thresholds and the stacker were fitted on), from the test predictions alone; needs 50+ essays.",
        False)
    expected_essays: int = param("Essays in the hidden test, for the runtime estimate printed before the run.", 8000,
                                 range="[1, inf)")
    time_limit_hours: float = param("Kaggle's limit the runtime estimate is checked against.", 9.0,
                                    range="(0, inf)")


@dataclass
class Params:
    seed: int = param("Seed of every random choice in the pipeline.", 42, range="[0, 4294967295]")
    backbone: str = param(
        "Default backbone: a Hugging Face name (microsoft/deberta-v3-large) or a local model folder.",
        "microsoft/deberta-v3-large",
    )
    paths: PathsParams = param("Where stages read and write.", factory=PathsParams)
    prepare: PrepareParams = param("Stage 00_prepare.", factory=PrepareParams)
    pseudo: PseudoParams = param("Stage 01_pseudo_label (pseudo-labels for train.students).", factory=PseudoParams)
    train: TrainParams = param("Stage 02_train.", factory=TrainParams)
    thresholds: ThresholdsParams = param("Stage 03_oof_thresholds.", factory=ThresholdsParams)
    ensemble: EnsembleParams = param("Stage 04_ensemble.", factory=EnsembleParams)
    infer: InferParams = param("Stage 05_infer.", factory=InferParams)

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
