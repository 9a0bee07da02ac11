"""The two failures a stage reports as one message, with no traceback: a bad input file, a bad state of the run.

`run_stage` (common.config.stage) turns both into a one-paragraph error and exit status 2. They sit at the bottom
of the layout: the engine, devices and tracking raise them as well as the stages.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """An expected failure a stage reports as one message (no traceback): the message says the fix."""


class InputError(ValueError):
    """One or more input files are unusable; the message lists every problem with its fix.

    `what` names the files in the header line ("N problem(s) in <what>:"), e.g. "the OOF predictions".
    """

    def __init__(self, problems: list[str], what: str = "the input files"):
        self.problems = problems
        self.what = what
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {what}:\n{lines}")
