"""The ensemble as 04_ensemble saves it and 05_infer opens, checks and applies it: the 04 -> 05 contract.

Files, under <output>/ensemble/artifacts/:
- ensemble.json: the selected method, the models and folds, the test essays' thresholds, and per method its
  entry (`Combiner.save`'s fields -- blend weights, the stacker's parameters -- with its thresholds, target
  weights and tuning), plus what the stacker's features need (`feature_columns`, `text_features`,
  `prompt_features`, `prompt_stats`);
- what each method's `save` writes beside it (the stacker's stacker/ folder);
- text_vocabulary.json and prompt_assigner.npz, when the stacker was given text or prompt features (the
  assigner also when the thresholds are per prompt cluster, `by_prompt`).

Nothing here knows one method from another: `COMBINERS` maps the selected name to the class that loads, checks
and applies it.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from common.config import layout
from common.core.artifact_checks import (
    COPY_HINT,
    ENSEMBLE_FILE,
    TRUNCATED,
    ArtifactError,
    Problems,
    escapes,
    json_problem,
    read_json,
)
from common.core.io import write_json
from common.ensemble.combiners import COMBINERS
from common.ensemble.features import TEST_ORIGIN, stacker_features
from common.prepare.clusters import PromptAssigner
from common.prepare.text_features import TextFeaturizer
from common.scoring.combiner import Combiner
from common.scoring.thresholds import apply_thresholds

if TYPE_CHECKING:
    from common.ensemble.search import EnsembleResult

log = logging.getLogger(__name__)

ENSEMBLE_DIR = Path("ensemble") / "artifacts"
"""Where the artifacts lie under an output (or artifacts) root."""
VOCABULARY_FILE = "text_vocabulary.json"
REQUIRED_KEYS = ("models", "selected", "thresholds")
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
"""What PromptAssigner.load raises on a truncated or damaged .npz (a zip archive of arrays)."""
RERUN = "re-run python 04_ensemble/run.py"


def _cut_points(thresholds: Any) -> bool:
    """True for 5 increasing numbers: what apply_thresholds takes."""
    numbers = isinstance(thresholds, list) and all(isinstance(t, int | float) for t in thresholds)
    return numbers and len(thresholds) == 5 and list(thresholds) == sorted(thresholds)


def _check_model_columns(ensemble_file: Path, models: list[str], columns: list[str] | None, problems: Problems
                         ) -> None:
    """The stacker's prediction columns (`pred__<model>`, `<model>__prob_<s>`) are those of ensemble.json's models:
    05_infer builds the features from the models it lists, so any other would fail after every model ran."""
    if columns is None:
        return
    names = [c.removeprefix("pred__") for c in stacker_features({m: np.zeros(1) for m in models}, {}, None).columns]
    found = sorted({c.removeprefix("pred__") for c in columns if c.startswith("pred__")}
                   | {c.split("__prob_")[0] for c in columns if "__prob_" in c and not c.startswith(("z__", "text__"))})
    if found != sorted(names):
        problems.bad(ensemble_file, f"its 'models' {models} disagree with the stacker's prediction columns (of models "
                     f"{found}): ensemble.json and stacker/ come from different runs of 04_ensemble", RERUN)


@dataclass
class EnsembleArtifact:
    """ensemble.json's contents, the fitted combiners (loaded: the selected one only) and the stacker's feature
    builders. `save` writes every file; `read_spec`, `check` and `load` read them back; `predict` scores essays."""

    spec: dict[str, Any]
    combiners: dict[str, Combiner] = field(default_factory=dict)
    featurizer: TextFeaturizer | None = None
    prompt_assigner: PromptAssigner | None = None

    @property
    def selected(self) -> str:
        return str(self.spec["selected"])

    @property
    def models(self) -> list[str]:
        return list(self.spec["models"])

    @classmethod
    def from_result(cls, result: EnsembleResult, models: list[str], folds: list[int],
                    members: dict[str, list[str]] | None = None) -> EnsembleArtifact:
        """What 04_ensemble saves of `build_ensemble`'s result; each method's entry is completed by its `save`.

        `members`: per model, the folders under train/<model>/folds/ whose test predictions 05_infer averages
        (its fold models per seed, its full fits); a model without an entry averages fold_<k> of `folds`.
        """
        by_origin = result.metrics["by_origin"]
        spec = {
            "selected": result.selected,
            "models": list(models),
            "folds": list(folds),
            "members": {name: list(units) for name, units in (members or {}).items()},
            "thresholds": result.methods[result.selected].thresholds,
            "by_origin": by_origin,
            "thresholds_origin": TEST_ORIGIN if by_origin else None,
            # "weights": the blends' (a method without stays None); their entries' own fields fill it in.
            "methods": {name: {"weights": None, "thresholds": m.thresholds, **m.extra}
                        for name, m in result.methods.items()},
            "feature_columns": result.feature_columns,
            "text_features": result.featurizer is not None,
            "prompt_features": result.prompt_stats is not None,
            "by_prompt": bool(result.metrics.get("by_prompt")),
            "thresholds_by_prompt": result.methods[result.selected].extra.get("thresholds_by_prompt"),
            "prompt_stats": result.prompt_stats,
        }
        combiners = {name: m.combiner for name, m in result.methods.items()}
        return cls(spec, combiners, result.featurizer, result.prompt_assigner)

    def save(self, directory: Path) -> None:
        """Every combiner's files and entry, then ensemble.json, the text vocabulary and the prompt assigner."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, combiner in self.combiners.items():
            self.spec["methods"][name].update(combiner.save(directory))
        write_json(directory / ENSEMBLE_FILE, self.spec)
        if self.featurizer is not None:
            write_json(directory / VOCABULARY_FILE, sorted(self.featurizer.vocabulary_))
        if self.prompt_assigner is not None:
            self.prompt_assigner.save(directory)

    @staticmethod
    def read_spec(root: Path) -> dict[str, Any]:
        """ensemble.json under `root` (an output or artifacts root), parsed, with the keys every reader needs."""
        ensemble_file = root / ENSEMBLE_DIR / ENSEMBLE_FILE
        if not ensemble_file.is_file():
            raise ArtifactError(f"{ensemble_file} not found: run 04_ensemble, or point infer.artifacts at the "
                                "folder that holds train/ and ensemble/artifacts/")
        spec, problem = json_problem(ensemble_file)
        if problem is None and not isinstance(spec, dict):
            problem = f"holds a JSON {type(spec).__name__}, not an object: {TRUNCATED}"
        if problem is None:
            absent = [key for key in REQUIRED_KEYS if key not in spec]
            if absent:
                problem = f"lacks {absent}: {TRUNCATED}, or written by another version"
        if problem is not None:
            raise ArtifactError(
                f"{ensemble_file}: {problem}, so no submission was written.\nFix: re-run 04_ensemble "
                f"(python 04_ensemble/run.py), or copy the complete ensemble/artifacts/ folder under {root} again "
                f"({COPY_HINT})."
            )
        return spec

    @staticmethod
    def member_dirs(root: Path, spec: dict[str, Any], folds: list[int], problems: Problems) -> dict[str, list[Path]]:
        """Per model of ensemble.json's "models", the folders of the members 05_infer averages (its "members"
        entry, else fold_<k> of `folds`), each confined to its parent: a model name to root/train/, a member to
        root/train/<model>/folds/. An entry that resolves elsewhere (`..`, an absolute path, a symlink out) is
        recorded in `problems` and left out, so nothing it names is read."""
        ensemble_file = root / ENSEMBLE_DIR / ENSEMBLE_FILE
        members = spec.get("members") or {}
        models = spec["models"]
        if not isinstance(models, list) or not isinstance(members, dict):
            problems.bad(ensemble_file, f"'models' must be a list and 'members' an object: {TRUNCATED}", RERUN)
            return {}
        unknown = sorted(set(members) - set(models))
        if unknown:
            problems.bad(ensemble_file, f"'members' names model(s) {unknown}, which 'models' {models} does not list: "
                         "the members disagree with the models the ensemble combines", RERUN)
        dirs: dict[str, list[Path]] = {}
        for name in models:
            why = escapes(root / "train", name)
            if why is not None:
                problems.bad(ensemble_file, f"'models' entry {why}: refused (an artifact names only files inside "
                             "its folder)", RERUN)
                continue
            parent = layout.model_dir(root, name) / "folds"
            units = members.get(name) or [layout.unit_name(k) for k in folds]
            if not isinstance(units, list):
                units = [units]
            for unit in units:
                why = escapes(parent, unit)
                if why is not None:
                    problems.bad(ensemble_file, f"'members' entry of {name}: {why}: refused (an artifact names only "
                                 "files inside its folder)", RERUN)
            dirs[name] = [parent / unit for unit in units if escapes(parent, unit) is None]
        return dirs

    @staticmethod
    def check(directory: Path, spec: dict[str, Any], problems: Problems) -> None:
        """Record in `problems` what of the selected method is missing or unreadable: the thresholds, its entry and
        files (its class's `check`), for a method on stacker features the vocabulary and the prompt assigner, and the
        prompt assigner of per-prompt thresholds."""
        ensemble_file = directory / ENSEMBLE_FILE
        if not _cut_points(spec.get("thresholds")):
            problems.bad(ensemble_file, f"'thresholds' must be 5 increasing cut points, found {spec.get('thresholds')!r}",
                         RERUN)
        by_prompt = spec.get("thresholds_by_prompt")
        if spec.get("by_prompt") and not (isinstance(by_prompt, dict) and by_prompt
                                          and all(_cut_points(cuts) for cuts in by_prompt.values())):
            problems.bad(ensemble_file, "'thresholds_by_prompt' must map every prompt cluster to 5 increasing cut "
                         f"points, found {by_prompt!r}", RERUN)
        selected = spec["selected"]
        kind = COMBINERS.get(selected)
        entry = spec.get("methods", {}).get(selected) if isinstance(spec.get("methods"), dict) else None
        if kind is None:
            problems.bad(ensemble_file, f"selects method {selected!r}, which this version does not know (it knows "
                         f"{list(COMBINERS)}): written by another version", RERUN)
            return
        if not isinstance(entry, dict):
            problems.bad(ensemble_file, f"has no entry for the selected method {selected!r}: {TRUNCATED}", RERUN)
            return
        kind.check(directory, entry, list(spec["models"]), problems, RERUN)
        if kind.uses_features:
            _check_model_columns(ensemble_file, list(spec["models"]), kind.input_columns(directory, entry), problems)
        if kind.uses_features and spec.get("text_features"):
            words = read_json(directory / VOCABULARY_FILE, problems, RERUN, kind=list)
            if words is not None and not all(isinstance(word, str) for word in words):
                problems.bad(directory / VOCABULARY_FILE, f"holds non-text entries: {TRUNCATED}", RERUN)
        if (kind.uses_features and spec.get("prompt_features")) or spec.get("by_prompt"):
            assigner_file = directory / PromptAssigner.FILE
            if not assigner_file.is_file():
                problems.missing(assigner_file, RERUN)
            else:
                try:
                    PromptAssigner.load(directory)
                except NPZ_ERRORS as exc:
                    problems.bad(assigner_file, f"not a readable prompt assigner ({type(exc).__name__}: {exc}): "
                                 f"{TRUNCATED}", RERUN)

    @classmethod
    def load(cls, directory: Path, spec: dict[str, Any]) -> EnsembleArtifact:
        """The selected combiner and, when it takes stacker features, their builders (call `check` first)."""
        kind = COMBINERS[spec["selected"]]
        combiner = kind.load(directory, spec["methods"][spec["selected"]])
        featurizer, assigner = None, None
        if kind.uses_features and spec.get("text_features"):
            words = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
            featurizer = TextFeaturizer.from_vocabulary(words)
        if (kind.uses_features and spec.get("prompt_features")) or spec.get("by_prompt"):
            assigner = PromptAssigner.load(directory)
        return cls(spec, {spec["selected"]: combiner}, featurizer, assigner)

    def features(self, preds: dict[str, np.ndarray], probs: dict[str, pd.DataFrame], texts: list[str]
                 ) -> pd.DataFrame:
        """The stacker features of test essays, built as 04 built them for the train rows; every test essay is
        other-origin."""
        text_frame = self.featurizer.transform(texts) if self.featurizer is not None else None
        prompts = None
        if self.prompt_assigner is not None and self.spec.get("prompt_features"):
            prompts = self.prompt_assigner.predict(texts)
            log.info("test essays per prompt cluster: %s",
                     {int(k): int(n) for k, n in zip(*np.unique(prompts, return_counts=True), strict=True)})
        origin = np.ones(len(texts)) if self.spec.get("by_origin") else None
        return stacker_features(preds, probs, text_frame, prompts, self.spec.get("prompt_stats"), origin)

    def predict(self, preds: dict[str, np.ndarray], probs: dict[str, pd.DataFrame], texts: list[str]
                ) -> tuple[np.ndarray, np.ndarray]:
        """(continuous ensemble prediction, integer scores 1-6), shape (n,) each, of essays from every model's
        prediction (model -> (n,)), class probabilities (model -> (n, 6) frame) and texts."""
        combiner = self.combiners[self.selected]
        inputs = self.features(preds, probs, texts) if combiner.uses_features else pd.DataFrame(preds)
        continuous = np.asarray(combiner.predict(inputs), dtype=float)
        by_prompt = self.spec.get("thresholds_by_prompt")
        if not by_prompt:
            return continuous, apply_thresholds(continuous, np.asarray(self.spec["thresholds"], dtype=float))
        prompts = self.prompt_assigner.predict(texts).astype(str)  # an unseen cluster: the origin's cut points
        scores = np.zeros(len(continuous), dtype=np.int64)
        for cluster in np.unique(prompts):
            rows = prompts == cluster
            cuts = by_prompt.get(str(cluster), self.spec["thresholds"])
            scores[rows] = apply_thresholds(continuous[rows], np.asarray(cuts, dtype=float))
        return continuous, scores
