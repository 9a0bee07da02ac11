"""What every stage script shares: logging, params from the command line, clean exits on bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from common.config import Params, ParamsError, parse_cli
from common.data import InputError
from common.logs import setup_logging

log = logging.getLogger("aes")


class PipelineError(RuntimeError):
    """An expected failure a stage reports as one message (no traceback): the message says the fix."""


def run_stage(main: Callable[[Params], None], description: str, argv: Sequence[str] | None = None) -> int:
    """Parse params, run `main(params)`, and turn expected failures into a one-paragraph message + exit 2."""
    setup_logging()
    try:
        params = parse_cli(argv, description=description)
        main(params)
    except (ParamsError, InputError, PipelineError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def exit_with(main: Callable[[Params], None], description: str) -> None:
    """Entry point for a stage's run.py."""
    sys.exit(run_stage(main, description))
