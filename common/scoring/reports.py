"""Plots that stages write next to their metrics (PNG, rendered by `dvc plots show` and the run report)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from common.core.plots import save_figure
from common.scoring.metrics import confusion


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str) -> None:
    """6x6 confusion matrix of true vs predicted scores, counts annotated, rows normalised for colour."""
    matrix = confusion(y_true, y_pred)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.3))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(6):
        for j in range(6):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(6), [str(s) for s in range(1, 7)])
    ax.set_yticks(range(6), [str(s) for s in range(1, 7)])
    ax.set_xlabel("predicted score")
    ax.set_ylabel("true score")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the true score's essays")
    save_figure(fig, Path(path))


def plot_pred_vs_true(
    y_true: np.ndarray, pred: np.ndarray, thresholds: list[float], path: str | Path, title: str
) -> None:
    """Box plot of continuous predictions per true score, with the fitted thresholds as lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [pred[y_true == s] for s in range(1, 7)]
    ax.boxplot(groups, positions=list(range(1, 7)), widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for s, values in zip(range(1, 7), groups, strict=True):
        ax.scatter(s + rng.uniform(-0.2, 0.2, len(values)), values, s=4, alpha=0.3)
    for t in thresholds:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("true score")
    ax.set_ylabel("OOF prediction (dashed: thresholds)")
    ax.set_title(title, fontsize=10)
    save_figure(fig, Path(path))


def plot_bars(values: dict[str, float], path: str | Path, title: str, xlabel: str) -> None:
    """Horizontal bars, one per key (e.g. blend weight per model, or QWK per method)."""
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(values) + 1.2))
    names = list(values)
    ax.barh(names, [values[n] for n in names])
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.3f}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    save_figure(fig, Path(path))


def plot_frontier(frontier: pd.DataFrame, path: str | Path) -> None:
    """Nested QWK on other-origin rows (x) against all rows (y) of each method across target weights.

    `frontier`: columns method, target_weight (a label), qwk_all, qwk_other; the row 'chosen' of a method (the
    weight chosen inside each training split) is drawn as a star.
    """
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (method, rows) in enumerate(frontier.groupby("method", sort=False)):
        color = f"C{i}"
        grid = rows[rows["target_weight"] != "chosen"].dropna(subset=["qwk_all", "qwk_other"])
        ax.plot(grid["qwk_other"], grid["qwk_all"], "o-", color=color, label=method, markersize=4)
        for _, r in grid.iterrows():
            ax.annotate(str(r["target_weight"]), (r["qwk_other"], r["qwk_all"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=color)
        chosen = rows[rows["target_weight"] == "chosen"].dropna(subset=["qwk_all", "qwk_other"])
        ax.plot(chosen["qwk_other"], chosen["qwk_all"], "*", color=color, markersize=12)
    ax.set_xlabel("nested QWK, other-origin rows")
    ax.set_ylabel("nested QWK, all rows")
    ax.set_title("Target frontier: numbers are the weight of other-origin rows; star: weight chosen by nested CV",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, Path(path))


def plot_intervals(table: pd.DataFrame, path: str | Path, selected: str, title: str) -> None:
    """Nested QWK with its bootstrap interval per method and model, on all rows and on other-origin rows."""
    keys = [k for k in ("all", "other") if f"qwk_{k}" in table]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 0.35 * len(table) + 1.5), squeeze=False)
    names = table["name"].tolist()
    for ax, key in zip(axes[0], keys, strict=True):
        point = table[f"qwk_{key}"].to_numpy(dtype=float)
        err = np.vstack([point - table[f"qwk_{key}_low"].to_numpy(dtype=float),
                         table[f"qwk_{key}_high"].to_numpy(dtype=float) - point])
        colors = ["C3" if n == selected else "C0" for n in names]
        for i, color in enumerate(colors):
            ax.errorbar(point[i], i, xerr=err[:, i:i + 1], fmt="none", ecolor=color, capsize=3)
        ax.scatter(point, range(len(names)), c=colors, zorder=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"nested QWK, {'all rows' if key == 'all' else 'other-origin rows'}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}; red: selected", fontsize=9)
    save_figure(fig, Path(path))
