"""How a params field is declared, and the errors params checks raise.

`param` declares a dataclass field with its help string (shown by --help) and, for a number, its allowed range,
checked at load (common.config.loader: a value outside fails before any work) and shown by --help. A range is
written "[a, b]" (both ends included), "(a, b)" (neither) or mixed; inf is unbounded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


class ParamsError(ValueError):
    """A key or value in params.yaml or in a command-line override is not valid."""


class FieldErrors(ValueError):
    """A dataclass's own checks failed: `problems` maps each bad field to what is wrong and the fix.

    `load_params` reports each with its key path (`'train.models.x.scorer.pooling': unknown pooling ...`).
    """

    def __init__(self, what: str, problems: dict[str, str]):
        super().__init__(f"invalid {what}: " + "; ".join(f"{name}: {why}" for name, why in problems.items()))
        self.problems = problems


def param(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
          range: str | None = None) -> Any:
    """A dataclass field with its help `text`, `default` (or `factory`) and, for a number, its allowed `range`."""
    metadata = {"help": text} if range is None else {"help": text, "range": range}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def ranges(cls: type) -> dict[str, str]:
    """{field name: allowed range} of the fields of dataclass `cls` that declare one."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}


def in_range(value: float, spec: str) -> bool:
    """Whether `value` lies in the range `spec` ("[2, inf)", "(0, 1]", ...)."""
    low, high = (float(part) for part in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below
