"""`Combiner`: the interface every way of combining the models' predictions implements (common.ensemble.combiners).

It sits below `common.scoring.nested`, whose `Chain` fits and scores any combiner nested, and below the blends and the
stacker that implement it, so neither of the two imports the other's module for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone

from common.core.artifact_checks import Problems

Objective = Literal["regression", "qwk"]


class Combiner(BaseEstimator):
    """What every way of combining the models implements (scikit-learn style: `__init__` only stores settings).

    `uses_features`: False -- X is the models' predictions, shape (n_rows, n_models), a DataFrame with one column
    per model in 04 and 05; True -- X is the stacker features of `common.ensemble.features.stacker_features`.
    `out_of_fold`: `fit_pred_` are out-of-fold predictions of the training rows (the stacker's inner CV), so a
    nested weight search inside the training rows refits only the thresholds on them. `min_folds`: the fewest folds
    a nested evaluation of the method needs. `needs_prompt_features`: X must hold the prompt cluster columns
    (`ensemble.prompt_features`); 04 skips the method without them.
    """

    uses_features: ClassVar[bool] = False
    out_of_fold: ClassVar[bool] = False
    min_folds: ClassVar[int] = 2
    needs_prompt_features: ClassVar[bool] = False

    @classmethod
    def configured(cls, objective: Objective = "regression", n_trials: int = 0, seed: int = 0) -> Combiner:
        """The unfitted combiner 04_ensemble evaluates, from the `ensemble` settings it uses."""
        return cls()

    def fit(self, X: Any, y: ArrayLike, sample_weight: ArrayLike | None = None,
            folds: ArrayLike | None = None) -> Combiner:
        """Fit on X against scores y, shape (n_rows,); set `fit_pred_`, shape (n_rows,); return self."""
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        """Continuous predictions, shape (n_rows,), on the score scale."""
        raise NotImplementedError

    def tune(self, X: Any, y: ArrayLike, folds: ArrayLike, sample_weight: ArrayLike | None = None) -> Combiner:
        """An unfitted copy with parameters chosen on these (training) rows alone; the default chooses none."""
        return clone(self)

    @property
    def tuned_params(self) -> dict[str, Any] | None:
        """What `tune` chose, for the report (None: the method has nothing to tune)."""
        return None

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the fitted combiner's files (if any) under `directory`, the ensemble's artifacts folder, and return
        its JSON entry: with those files, all `load` needs."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, entry: Mapping[str, Any]) -> Combiner:
        """The fitted combiner `save` wrote, ready to `predict`."""
        raise NotImplementedError

    @classmethod
    def check(cls, directory: Path, entry: Mapping[str, Any], models: Sequence[str], problems: Problems,
              fix: str) -> None:
        """Record in `problems` every file or entry field `load` needs that is missing or unreadable."""
        raise NotImplementedError

    @classmethod
    def input_columns(cls, directory: Path, entry: Mapping[str, Any]) -> list[str] | None:
        """The columns of X the saved combiner was fitted on, for a method on stacker features (None: not recorded,
        or unreadable, which `check` reports)."""
        return None
