"""The artifacts inference reads: every fold model of every ensemble member and the ensemble, checked whole.

`ArtifactSet.open` reads ensemble.json and checks every file inference reads before any model runs: there, and
readable (weights headers, every JSON, and the selected ensemble method's files: `EnsembleArtifact.check`), so a
missing or truncated fold or threshold file fails in seconds with its path and the fix, never after an hour or
with a partial submission. Every load is from a local folder (Kaggle runs it offline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.core.artifact_checks import (
    COPY_HINT,
    TRUNCATED,
    ArtifactError,
    Problems,
    read_json,
    safetensors_problem,
)
from common.ensemble.ensemble_artifact import ENSEMBLE_DIR, EnsembleArtifact
from common.models.scorer import (
    ADAPTER_DIR,
    BACKBONE_CONFIG_DIR,
    CONFIG_FILE,
    HEAD_FILE,
    WEIGHTS_FILE,
    read_config,
)
from common.models.text_model import TextModel, is_text_model

# Tokenizer files AutoTokenizer reads as JSON when a fold folder has them.
TOKENIZER_JSON = ("tokenizer.json", "special_tokens_map.json", "added_tokens.json", "vocab.json")
# What TokenCache needs in a fold's train_config.json["model"] (TokenSettings.of gives the later ones their defaults).
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
