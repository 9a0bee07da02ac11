"""The run report's building blocks: HTML tables, inlined images and figures, notes, and the plot style.

Every section of common.tools.run_report writes its HTML through these: `_table` (a frame as a table, floats
formatted per column), `_img` / `_fig` (a PNG file or a matplotlib figure inlined as base64), `_plots`,
`_missing` (a stage that has not run) and `_percent`; `_PLOT_STYLE` sets the font sizes of every plot drawn.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

_PLOT_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
               "xtick.labelsize": 9, "ytick.labelsize": 9}
"""Font sizes of the plots the report draws: readable at the size the page shows them."""


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _img(path: Path, mark: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    image = f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{mark}</figcaption></figure>" if mark else image


def _plots(images: list[str]) -> str:
    return f'<div class="plots">{"".join(images)}</div>' if images else ""


def _fig(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _cell(value: object, spec: str) -> str:
    """One table cell as HTML: floats in `spec` (a format spec, '.4f'), integers as they are, text escaped."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        return format(float(value), spec)
    return html.escape(str(value))


def _table(frame: pd.DataFrame, default: str = ".4f", formats: Mapping[str, str] | None = None,
           html_columns: tuple[str, ...] = (), headers: Mapping[str, str] | None = None) -> str:
    """`frame` as an HTML table, no index: float cells in `formats[column]` or `default` (QWK: .4f); the cells of
    `html_columns` and the `headers` given (column -> header) are HTML already (a name with its badge)."""
    formats, headers = formats or {}, headers or {}
    head = "".join(f"<th>{headers.get(c, html.escape(str(c)))}</th>" for c in frame.columns)
    specs = [formats.get(c, default) for c in frame.columns]
    raw = [c in html_columns for c in frame.columns]
    body = "".join("<tr>" + "".join(f"<td>{v if r else _cell(v, s)}</td>" for v, s, r in zip(row, specs, raw, strict=True))
                   + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)}</p>'


def _percent(share: float) -> str:
    """A share as a percentage to 3 significant digits: '4.38%', '0.00339%' (never '0.00%')."""
    return f"{100 * share:.3g}%"
