"""`COMBINERS`: every way 04_ensemble combines the models' OOF predictions, by the name ensemble.json records.

Inputs everywhere: `P`, shape (n_rows, n_models), continuous OOF predictions on the score scale;
`y`, shape (n_rows,), true scores 1..6; `folds`, shape (n_rows,), the fold each row was held out in.

Every method implements `Combiner` (common.scoring.combiner, below common.scoring.nested, which fits any of them):
`fit(X, y, sample_weight, folds)` (returns self, sets `fit_pred_`, the predictions of the training rows that
thresholds are fitted on), `predict(X)`, `tune` (parameters chosen on training rows, the stacker's optuna search),
`save(directory)` / `load(directory, entry)` and `check` (what 05_infer verifies before any model runs). The blends
are in `common.ensemble.blenders`, the LightGBM stacker in `common.ensemble.stacker`; adding a method is one class
there and one line here. Honest scores of a combiner (weights and thresholds fitted on the other folds only) come
from `common.scoring.nested.Chain`.
"""

from __future__ import annotations

from common.ensemble.blenders import GreedyBlender, MeanBlender, PromptBlender, ScipyBlender
from common.ensemble.stacker import LGBMStacker
from common.scoring.combiner import Combiner

COMBINERS: dict[str, type[Combiner]] = {
    "mean": MeanBlender,
    "greedy": GreedyBlender,
    "scipy": ScipyBlender,
    "per_prompt": PromptBlender,
    "stacker": LGBMStacker,
}
"""Every method 04_ensemble evaluates, by the name ensemble.json records, simplest first: selection keeps the
simpler one unless a more complex one wins by more than the interval of their paired difference."""
