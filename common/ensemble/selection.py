"""The selection rules of 04_ensemble: which combining method, and which target weight, to keep from their nested
scores, and the bootstrap intervals they decide on.

`select_method` applies `ensemble.selection` (SELECTIONS): "noise_aware" (the default: the best nested QWK on the
target's rows unless methods within its paired interval there are ahead on all rows, `near_tie`), "best" or
"simplest" (`prefer_simpler`, in `COMPLEXITY` order); `pick_weight` chooses the target weight the same way. The
nested scores come from 04's search (`common.ensemble.search`); the paired bootstrap from
`common.scoring.uncertainty`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from common.ensemble.combiners import COMBINERS
from common.ensemble.target import Rows, Target, qwk_on, weight_label
from common.scoring.metrics import qwk
from common.scoring.uncertainty import Bootstrap, bootstrap_qwk

COMPLEXITY = tuple(COMBINERS)
"""Methods from simplest to most complex (the registry's order): selection keeps the simpler one unless a more
complex one wins by more than the interval of their paired difference."""


def near_tie(order: Sequence[str], boot: Bootstrap, all_rows: Mapping[str, float | None], what: str = "method"
             ) -> tuple[str, str]:
    """The noise-aware choice among `order` (simplest first), and why, in words.

    The best on the target's rows (`boot`) is kept unless candidates lie within noise of it there: those it does not
    beat beyond the paired interval of their difference (its lower end at or below 0). Among it and them, the best
    QWK on all rows (`all_rows`) is kept, ties to the earlier in `order`. A lead on the target's rows that the
    paired bootstrap cannot tell from noise is not worth a certain loss on the larger sample of every row; a clear
    lead is kept whatever it costs on the other rows.
    """
    best = max(order, key=lambda m: boot.point[m])
    tied = [m for m in order if m == best or boot.difference(best, m)["low"] <= 0.0]
    pick = max(tied, key=lambda m: -math.inf if all_rows.get(m) is None else all_rows[m])
    others = [m for m in tied if m != best]
    if pick == best:
        return best, (f"{what} {best} has the best nested QWK on the target's rows ({boot.point[best]:.4f})"
                      + (f"; {', '.join(others)} within its paired interval there, behind on all rows" if others
                         else "; none of the others within its paired interval there"))
    d = boot.difference(best, pick)
    return pick, (f"{what} {best} leads {pick} by {d['diff']:+.4f} on the target's rows, inside the paired interval "
                  f"[{d['low']:+.4f}, {d['high']:+.4f}] (noise), while {pick} is ahead on all rows "
                  f"({all_rows[pick]:.4f} vs {all_rows[best]:.4f}): {pick} is kept")


def prefer_simpler(order: Sequence[str], boot: Bootstrap) -> tuple[str, str]:
    """The first (simplest) of `order` that the best one does not beat by more than the interval of their paired
    difference; and why, in words."""
    best = max(order, key=lambda m: boot.point[m])
    for name in order:
        if name == best:
            return name, f"{name} has the best nested QWK ({boot.point[name]:.4f})"
        d = boot.difference(best, name)
        if d["low"] <= 0.0:
            return name, (f"{best} is ahead of {name} by {d['diff']:+.4f}, inside the paired interval "
                          f"[{d['low']:+.4f}, {d['high']:+.4f}]: the simpler {name} is kept")
    return best, best


SELECTIONS = ("noise_aware", "best", "simplest")


def select_method(methods: Mapping[str, Any], boot: Bootstrap, rule: str = "best",
                  all_rows: Mapping[str, float | None] | None = None) -> tuple[str, str]:
    """The method to keep, and why. "noise_aware": the best nested QWK on the target's rows, unless methods within
    its paired interval there are ahead on all rows (`all_rows`: nested QWK on every row; `near_tie`); "best": the
    best nested QWK on the target's rows (ties to the simpler); "simplest": the simplest (in `COMPLEXITY` order)
    that the best does not beat beyond the interval of their paired difference."""
    if rule not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {rule!r}")
    order = [m for m in COMPLEXITY if m in methods]
    if rule == "noise_aware":
        return near_tie(order, boot, all_rows if all_rows is not None else boot.point)
    simplest, reason = prefer_simpler(order, boot)
    if rule == "simplest":
        return simplest, reason
    best = max(order, key=lambda m: boot.point[m])
    note = "" if simplest == best else f"; selection=simplest would keep {simplest} ({reason})"
    return best, f"{best} has the best nested QWK ({boot.point[best]:.4f}){note}"


def best_weight(scores: Mapping[float, np.ndarray], rows: Rows, target: Target, within: np.ndarray) -> float:
    """The target weight whose nested scores have the best QWK on the target's rows in `within`; ties go to the
    smaller weight (the fit closest to all rows)."""
    select = np.where(within, target.select_weights(rows.other, rows.base), 0.0)
    figures = {w: qwk_on(rows, s, select) for w, s in scores.items()}
    return max(sorted(scores), key=lambda w: figures[w] if figures[w] is not None else -1.0)


def pick_weight(scores: Mapping[float, np.ndarray], rows: Rows, target: Target, within: np.ndarray
                ) -> tuple[float, str]:
    """The target weight to use, from nested scores of the rows in `within` at each candidate, and why.

    `target.rule` "noise_aware" applies `near_tie` to the weights (smaller first: the fit closest to all rows): the
    best on the target's rows unless weights within its paired interval there score better on all rows. Any other
    rule keeps the best on the target's rows (`best_weight`)."""
    best = best_weight(scores, rows, target, within)
    if target.rule != "noise_aware" or len(scores) < 2 or target.select_on == "all":
        return best, f"best nested QWK on the {target.select_on} rows"
    select = np.where(within, target.select_weights(rows.other, rows.base), 0.0)
    if np.unique(rows.y[select > 0]).size < 2:
        return best, "too few target rows to compare"
    idx = np.flatnonzero(within)  # scores outside `within` are not made (zeros)
    named = {weight_label(w): np.asarray(s)[idx] for w, s in sorted(scores.items())}
    boot = bootstrap_qwk(rows.y[idx], named, rows.folds[idx], select[idx] > 0, select[idx], target.n_draws,
                         target.level, target.seed)
    all_rows = {label: qwk(rows.y[idx], s, sample_weight=rows.base[idx]) for label, s in named.items()}
    label, why = near_tie(list(named), boot, all_rows, what="target weight")
    return next(w for w in scores if weight_label(w) == label), why


def bootstraps(scores: Mapping[str, np.ndarray], rows: Rows, target: Target, n_draws: int, level: float,
               seed: int) -> dict[str, Bootstrap]:
    """Bootstrap of every scoring on all rows, on other-origin rows (when they can be scored) and on the target's
    rows ('target'), each on one shared set of draws."""
    boots = {"all": bootstrap_qwk(rows.y, scores, rows.folds, None, rows.base, n_draws, level, seed)}
    if rows.other.any() and np.unique(rows.y[rows.other]).size >= 2:
        boots["other"] = bootstrap_qwk(rows.y, scores, rows.folds, rows.other, rows.base, n_draws, level, seed)
    select = target.select_weights(rows.other, rows.base)
    boots["target"] = boots.get(target.select_on) or bootstrap_qwk(rows.y, scores, rows.folds, select > 0, select,
                                                                   n_draws, level, seed)
    return boots


def interval_table(boots: Mapping[str, Bootstrap], selected: str | None) -> pd.DataFrame:
    """Nested QWK with its interval on all rows and on other-origin rows, and the paired difference to the
    selected method on the target's rows; one row per method or model."""
    table = []
    for name in boots["all"].point:
        entry: dict[str, Any] = {"name": name}
        for key in ("all", "other"):
            if key in boots:
                low, high = boots[key].interval(name)
                entry.update({f"qwk_{key}": boots[key].point[name], f"qwk_{key}_low": low, f"qwk_{key}_high": high})
        if selected is not None:
            d = boots["target"].difference(name, selected)
            entry.update({"diff_vs_selected": d["diff"], "diff_low": d["low"], "diff_high": d["high"]})
        table.append(entry)
    return pd.DataFrame(table)
