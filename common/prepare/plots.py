"""00_prepare's plots: the share of each score per fold and per prompt (PNG beside the stage's metrics)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from common.core.plots import save_figure


def plot_score_distribution(frame: pd.DataFrame, by: str, path: str | Path, title: str) -> None:
    """Grouped bars: share of each score (1-6) within every value of column `by`, plus the overall share."""
    shares = pd.crosstab(frame[by], frame["score"], normalize="index")
    overall = frame["score"].value_counts(normalize=True).rename("all rows")
    shares = pd.concat([shares, overall.to_frame().T]).fillna(0.0)
    counts = frame[by].value_counts()
    labels = [f"{idx} (n={counts.get(idx, len(frame))})" for idx in shares.index]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shares) + 3), 4))
    width = 0.8 / len(shares)
    for i, (label, row) in enumerate(zip(labels, shares.itertuples(index=False), strict=True)):
        xs = [s + (i - len(shares) / 2 + 0.5) * width for s in shares.columns]
        ax.bar(xs, list(row), width=width, label=label)
    ax.set_xticks(list(shares.columns))
    ax.set_xlabel("score")
    ax.set_ylabel("share of essays")
    ax.set_title(title)
    ax.legend(fontsize=9, title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=by)
    save_figure(fig, Path(path))


