"""Which outputs under a run's folder this run made: the report's "other run" badges and notes.

A model folder under train/ whose OOF metrics name other folds than prepare/folds.parquet (`other_runs`), or an
ensemble built on such a model (`_stale_ensemble`), is another run's: the sections badge it (`_name`, `_badge`)
or skip it with a note that names it (`_other_runs_note`, `_ensemble_note`). Also the readers of the per-model
reports (`_models`) and of the folds (`_folds`) that the sections share.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from common.prepare.folds import folds_fingerprint
from common.tools.report_html import _json


def _folds(out: Path) -> pd.DataFrame | None:
    path = out / "prepare" / "folds.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _models(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "thresholds").glob("*.json"))}


def other_runs(out: Path) -> dict[str, str]:
    """Model folders under train/ that this run's folds did not make: name -> why (the report badges or skips them)."""
    folds_path = out / "prepare" / "folds.parquet"
    current = folds_fingerprint(pd.read_parquet(folds_path)) if folds_path.is_file() else None
    found = {}
    for folder in sorted(p for p in (out / "train").glob("*") if p.is_dir()):
        made_on = (_json(folder / "metrics.json") or {}).get("folds_fingerprint")
        if made_on is None:
            found[folder.name] = "no OOF metrics"
        elif made_on != current:
            found[folder.name] = "trained on other folds (from another run)"
    return found


def _badge(why: str) -> str:
    return f'<span class="badge" title="{html.escape(why)}">other run</span>'


def _name(name: str, stale: Mapping[str, str], shown: str | None = None) -> str:
    """A model's name as HTML for a table or caption (`shown` instead of the name if given), badged if stale."""
    text = html.escape(shown or name)
    return text + _badge(stale[name]) if name in stale else text


def _other_runs_note(stale: Mapping[str, str], shown: bool) -> str:
    """The note under a section that reads per-model files: which models are not this run's, and what it did."""
    if not stale:
        return ""
    items = ", ".join(f"<b>{html.escape(n)}</b> ({html.escape(why)})" for n, why in stale.items())
    said = "Made by another run, shown with the badge" if shown else "Not part of this run, so not shown"
    return f'<p class="stale">{_badge("not this run")} {said}: {items}.</p>'


def _stale_ensemble(out: Path, stale: Mapping[str, str]) -> list[str]:
    """The models of the ensemble (04_ensemble's metrics.json) that another run made."""
    metrics = _json(out / "ensemble" / "metrics.json") or {}
    return [m for m in metrics.get("models", []) if m in stale]


def _ensemble_note(names: list[str]) -> str:
    if not names:
        return ""
    listed = ", ".join(f"<b>{html.escape(n)}</b>" for n in names)
    return f'<p class="stale">{_badge("not this run")} The ensemble was built on model(s) of another run: {listed}.</p>'
