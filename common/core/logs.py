"""One logging format for every stage script and benchmark."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once (level from the argument, else $AES_LOG_LEVEL, else INFO)."""
    level = level or os.environ.get("AES_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def duration(seconds: float) -> str:
    """'4.3 s', '12 min 5 s', '2 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_hours(hours: float) -> str:
    """'2.35 h' from an hour up; below, 4 significant digits and the time itself: '0.0003051 h (1.1 s)'.

    Runtime estimates of small runs are fractions of a second; this never prints them as '0.00 h'.
    """
    if hours >= 1:
        return f"{hours:.2f} h"
    return f"{hours:.4g} h ({duration(hours * 3600)})"
