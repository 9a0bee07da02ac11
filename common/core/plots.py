"""Saving matplotlib figures as the stages' PNG plots: headless (Agg), written atomically, the figure closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from common.core.io import atomic_write


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """`fig` as a PNG at `path` (a crash mid-write leaves no partial file), then closed."""
    with atomic_write(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
