"""Typed pipeline parameters: `params.yaml` plus `dotted.key=value` command-line overrides.

Every setting of every stage is a typed dataclass field with a help string. `load_params` reads the
YAML file, applies overrides, and checks every key and value against the dataclasses, so a typo or a
value of the wrong type fails at start-up with a message that names the key and the allowed keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ParamsError(ValueError):
    """A key or value in params.yaml or in a command-line override is not valid."""


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class PathsParams:
    input: str = _help("Folder holding the competition CSVs (train, test, sample_submission, corpus).", "input")
    output: str = _help("Folder every stage writes its artifacts under.", "output")


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
class PseudoParams:
    # MLM domain adaptation (stage mlm): writes <paths.output>/mlm/backbone, used by models whose
    # backbone is "mlm". The demo's tiny random backbone needs a high learning rate; deberta-v3 ~5e-5.
    mlm_probability: float = _help("Share of tokens masked in MLM domain adaptation.", 0.15)
    mlm_epochs: float = _help("Epochs of MLM domain adaptation over train + test + external essays.", 2.0)
    mlm_whole_word: bool = _help("Mask whole words instead of single tokens.", False)
    mlm_max_length: int = _help("Tokens per MLM chunk (long essays are split into chunks).", 256)
    mlm_batch_size: int = _help("Chunks per MLM batch.", 16)
    mlm_lr: float = _help("MLM learning rate.", 1e-3)
    mlm_held_out_share: float = _help("Share of essays held out to report MLM loss before and after.", 0.05)
    mlm_add_newline_tokens: bool = _help("Add the newline token (as the models that use the result do).", True)
    # Soft pseudo-labels (stage pseudo_label)
    teacher: str = _help(
        "Model of train.models whose fold-k model labels the external essays for fold k's students.",
        "tiny-regression")
    regression_sigma: float = _help(
        "Spread (in score points) of the normal distribution a regression teacher's prediction becomes.", 0.6)


@dataclass
class ModelParams:
    name: str = _help("Unique model name; artifacts go to output/train/<name>/.")
    backbone: str = _help("Backbone name or folder; empty uses the top-level backbone.", "")
    # Model
    head: Literal["regression", "classification", "ordinal"] = _help("Prediction head.", "regression")
    regression_loss: Literal["mse", "smooth_l1"] = _help("Loss of the regression head.", "mse")
    pooling: Literal["cls", "mean", "max", "mean_max", "attention", "weighted_layer", "gem"] = _help(
        "Pooling of the token states.", "mean"
    )
    dropout: float = _help("Dropout before the head.", 0.1)
    n_dropout_samples: int = _help("Multi-sample dropout: head passes averaged in training.", 1)
    reinit_layers: int = _help("Re-initialise the top N encoder layers.", 0)
    freeze_embeddings: bool = _help("Freeze the embedding layer.", False)
    gradient_checkpointing: bool = _help("Trade compute for memory in the backbone.", False)
    lora_r: int = _help("LoRA rank (peft); 0 fine-tunes every weight.", 0)
    lora_alpha: int = _help("LoRA alpha.", 16)
    lora_dropout: float = _help("LoRA dropout.", 0.05)
    # Tokenisation
    max_length: int = _help("Tokens kept per essay (truncation beyond).", 512)
    add_newline_tokens: bool = _help("Add newline tokens (DeBERTa drops newlines) and resize embeddings.", True)
    padding_side: Literal["right", "left"] = _help("Side padding goes on.", "right")
    truncation_side: Literal["right", "left"] = _help("Side truncation cuts from.", "right")
    add_special_tokens: bool = _help("Add [CLS]/[SEP] (or the tokenizer's equivalents).", True)
    # Optimisation
    epochs: float = _help("Epochs of the main (last) training stage.", 2.0)
    batch_size: int = _help("Essays per batch per device.", 8)
    effective_batch_size: int = _help(
        "Essays per optimizer step across devices and accumulation steps (a multiple of batch_size).", 16
    )
    lr: float = _help("Learning rate of the top encoder layer.", 2e-5)
    head_lr: float = _help("Learning rate of pooling and head.", 1e-3)
    layerwise_lr_decay: float = _help("LR multiplier per encoder layer going down (1.0: none).", 0.9)
    weight_decay: float = _help("AdamW weight decay (not on biases and norms).", 0.01)
    scheduler: Literal["linear", "cosine", "constant"] = _help("LR schedule after warmup.", "cosine")
    warmup_ratio: float = _help("Share of steps spent warming up.", 0.1)
    max_grad_norm: float = _help("Gradient clipping norm (0: off).", 1.0)
    ema_decay: float = _help("EMA of weights used for evaluation and saving (0: off).", 0.0)
    awp_lr: float = _help("Adversarial weight perturbation step (0: off).", 0.0)
    awp_eps: float = _help("AWP perturbation bound, relative to weight size.", 1e-3)
    awp_start_epoch: float = _help("Epoch from which AWP is applied.", 1.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _help(
        "auto: bf16 where the GPU supports it, fp16 + GradScaler otherwise, none on CPU.", "auto"
    )
    # Two-stage training
    stage1_rows: Literal["none", "persuade", "other", "all"] = _help(
        "Rows of the training folds for a first stage ('none': single stage).", "none"
    )
    stage1_epochs: float = _help("Epochs of the first stage.", 1.0)
    stage2_rows: Literal["all", "persuade", "other"] = _help(
        "Rows of the training folds for the main stage (held-out fold never used).", "all"
    )
    # Pseudo-labelled external essays (output/pseudo/fold_<k>.parquet, from a teacher that never saw fold k)
    pseudo_labels: Literal["none", "two_stage", "concat"] = _help(
        "none; two_stage: a first stage on the fold's pseudo-labelled essays (soft labels: KL divergence, "
        "MSE on the expectation for regression), then the stages above; concat: pseudo rows join every "
        "stage with weight pseudo_weight.", "none")
    pseudo_epochs: float = _help("Epochs of the pseudo-label stage (two_stage).", 1.0)
    pseudo_weight: float = _help("Loss weight of a pseudo-labelled row relative to a labelled one (concat).", 0.5)
    # Evaluation and checkpoints
    eval_every: int = _help("Evaluate on the held-out fold every N optimizer steps (0: at each epoch end).", 0)
    keep_best: bool = _help("Keep the best-by-eval-QWK weights instead of the final ones.", False)
    checkpoint_every: int = _help("Save a resumable checkpoint every N optimizer steps (0: each epoch).", 0)


@dataclass
class TrainParams:
    models: list[ModelParams] = _help(
        "Named model configs trained fold by fold (the defaults are the demo's tiny models).",
        factory=lambda: [
            ModelParams(name="tiny-regression", lr=2e-3, head_lr=5e-3, layerwise_lr_decay=1.0, max_length=384,
                        epochs=3.0, eval_every=10),
            ModelParams(name="tiny-ordinal", head="ordinal", pooling="attention", lr=2e-3, head_lr=5e-3,
                        layerwise_lr_decay=1.0, max_length=384, epochs=3.0, stage1_rows="persuade",
                        stage1_epochs=1.0, eval_every=10),
            ModelParams(name="tiny-student", backbone="mlm", lr=2e-3, head_lr=5e-3, layerwise_lr_decay=1.0,
                        max_length=384, epochs=3.0, pseudo_labels="two_stage", pseudo_epochs=1.0, eval_every=10),
        ],
    )
    model: str = _help("Train only this model (dvc's per-model stages set it); empty: every model.", "")
    folds: list[int] = _help("Folds to train; empty: every fold in folds.parquet.", factory=list)
    step: Literal["all", "fit", "collect"] = _help(
        "all: train the folds, then write the model's oof.parquet once every fold exists; fit: train only "
        "(dvc's per-fold stages); collect: only write oof.parquet and metrics.json (every fold must exist).",
        "all",
    )
    dvc_models: list[str] = _help(
        "Models without pseudo-labels that dvc.yaml trains, one `train` stage per model and fold.",
        factory=lambda: ["tiny-regression", "tiny-ordinal"],
    )
    dvc_students: list[str] = _help(
        "Models with pseudo-labels that dvc.yaml trains after the pseudo_label stage (`student` stages).",
        factory=lambda: ["tiny-student"],
    )
    dvc_folds: list[int] = _help(
        "Folds dvc.yaml trains as separate stages: 0 .. prepare.n_folds - 1 (the oof stage lists them too).",
        factory=lambda: [0, 1, 2, 3],
    )
    device: Literal["auto", "cpu", "cuda"] = _help("Where to train; auto picks CUDA when present.", "auto")
    num_threads: int = _help("CPU threads for torch (0: torch's default).", 0)

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ParamsError(f"train.models: model name(s) {twice} listed twice; every model needs its own name")
        if self.model and self.model not in names:
            raise ParamsError(f"train.model={self.model!r} is not in train.models ({', '.join(names)})")
        listed_lists = [*self.dvc_models, *self.dvc_students]
        if listed_lists and sorted(listed_lists) != sorted(names):
            listed = set(listed_lists)
            problems = [f"missing {sorted(set(names) - listed)}" if set(names) - listed else "",
                        f"unknown {sorted(listed - set(names))}" if listed - set(names) else "",
                        "a name listed twice" if len(listed) < len(listed_lists) else ""]
            raise ParamsError(
                "train.dvc_models + train.dvc_students must list every name in train.models once (dvc.yaml runs "
                f"one stage per name there): {', '.join(p for p in problems if p)}"
            )
        by_name = {m.name: m for m in self.models}
        wrong = [n for n in self.dvc_models if n in by_name and by_name[n].pseudo_labels != "none"]
        wrong += [n for n in self.dvc_students if n in by_name and by_name[n].pseudo_labels == "none"]
        if wrong:
            raise ParamsError(
                f"train: {wrong} listed on the wrong side: models with pseudo_labels go in train.dvc_students "
                "(they run after the pseudo_label stage), the others in train.dvc_models")

@dataclass
class ThresholdsParams:
    polish: bool = _help("Polish the exact coordinate threshold search with scipy (kept only if it helps).", True)


@dataclass
class EnsembleParams:
    models: list[str] = _help(
        "Models to post-process (03 and 04); empty means every model under output/train with an oof.parquet.",
        factory=list,
    )
    select_on: Literal["all", "other"] = _help(
        "Rows whose nested QWK picks the ensemble method: all rows, or other-origin rows only.", "all"
    )
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


@dataclass
class InferParams:
    batch_tokens: int = _help("Token budget per inference batch on GPU (essays sorted by length; 4096 at most "
                              "on CPU).", 16384)
    artifacts: str = _help(
        "Root holding train/<model>/fold_<k>/ and ensemble/artifacts/; empty: paths.output locally, "
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
    expected_essays: int = _help("Essays in the hidden test, for the runtime estimate printed before the run.", 8000)
    time_limit_hours: float = _help("Kaggle's limit the runtime estimate is checked against.", 9.0)


@dataclass
class Params:
    seed: int = _help("Seed of every random choice in the pipeline.", 42)
    backbone: str = _help(
        "Default backbone: a Hugging Face name (microsoft/deberta-v3-large) or a local model folder.",
        "input/tiny-deberta-v2",
    )
    paths: PathsParams = _help("Where stages read and write.", factory=PathsParams)
    prepare: PrepareParams = _help("Stage 00_prepare.", factory=PrepareParams)
    pseudo: PseudoParams = _help("Stage 01_pseudo_label.", factory=PseudoParams)
    train: TrainParams = _help("Stage 02_train.", factory=TrainParams)
    thresholds: ThresholdsParams = _help("Stage 03_oof_thresholds.", factory=ThresholdsParams)
    ensemble: EnsembleParams = _help("Stage 04_ensemble.", factory=EnsembleParams)
    infer: InferParams = _help("Stage 05_infer.", factory=InferParams)

    def __post_init__(self) -> None:
        models = {m.name: m for m in self.train.models}
        students = [m.name for m in self.train.models if m.pseudo_labels != "none"]
        if students and self.pseudo.teacher not in models:
            raise ParamsError(f"pseudo.teacher={self.pseudo.teacher!r} is not in train.models ({', '.join(models)})")
        if students and models[self.pseudo.teacher].pseudo_labels != "none":
            raise ParamsError(f"pseudo.teacher={self.pseudo.teacher!r} trains on pseudo-labels itself; the teacher "
                              "must be a model without them (its labels would otherwise feed on themselves)")

    @property
    def input_dir(self) -> Path:
        return Path(self.paths.input)

    @property
    def output_dir(self) -> Path:
        return Path(self.paths.output)


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
    return cls(**kwargs)


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


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override to raw params data in place (value parsed as YAML)."""
    if "=" not in override:
        raise ParamsError(f"override '{override}' must look like dotted.key=value (e.g. prepare.n_folds=5)")
    key, raw = override.split("=", 1)
    key = key.strip()
    path = key.split(".")
    _schema_type(Params, path)
    value = yaml.safe_load(raw) if raw.strip() else ""
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
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
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


def describe(cls: type = Params, prefix: str = "") -> list[str]:
    """One line per leaf parameter: dotted key, type, default and help."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        lines.append(f"  {key} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return lines


def parse_cli(argv: typing.Sequence[str] | None = None, description: str = "") -> Params:
    """Parse a stage's command line: `[--params FILE] [dotted.key=value ...]`."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameters (override with dotted.key=value):\n" + "\n".join(describe()),
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied on top of the file")
    args = parser.parse_args(argv)
    return load_params(args.params, args.overrides)
