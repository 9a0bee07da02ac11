"""What every stage script shares: logging, params from the command line, clean exits on bad input."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common.config.fields import ParamsError
from common.config.loader import parse_cli
from common.config.params import Params
from common.core.errors import InputError, PipelineError
from common.core.io import WriteFailed, write_failed, write_failure
from common.core.logs import setup_logging
from common.core.offline import force_offline

log = logging.getLogger("aes")


RUNTIME_LOG = "runtime.jsonl"
"""One line per successful stage run under paths.output: stage, arguments, seconds (the run report reads it)."""

INSIDE_STAGE = "AES_INSIDE_STAGE"
"""Environment variable a stage sets, to its own name, for the processes it starts that run a stage script too
(02_train's fold workers): their runtime records carry it as `inside`, and the run report leaves them out of its
sums, since the stage's own record already holds the time it waited for them."""


def _stage_name(main: Callable) -> str:
    """`02_train` for 02_train/run.py, `01_pseudo_label/mlm` for 01_pseudo_label/mlm.py."""
    try:
        path = Path(inspect.getfile(main))
    except TypeError:
        return getattr(main, "__name__", "stage")
    return path.parent.name if path.stem == "run" else f"{path.parent.name}/{path.stem}"


def record_runtime(output_dir: Path, stage: str, args: Sequence[str], seconds: float) -> None:
    """Append one line to <output>/runtime.jsonl (a single short write: safe from parallel stages); a process
    started by another stage (INSIDE_STAGE set) records that stage's name as `inside`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "args": list(args), "seconds": round(seconds, 2),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if os.environ.get(INSIDE_STAGE):
        record["inside"] = os.environ[INSIDE_STAGE]
    line = json.dumps(record)
    with open(output_dir / RUNTIME_LOG, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def check_writable(folder: Path, key: str = "paths.output", create: bool = True) -> None:
    """Fail at start, not after hours of work, when the stage could not save anything under `folder`.

    `create` False leaves no folder behind: the probe goes to the nearest folder that exists, which must take it.
    """
    probed = folder if create else next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    try:
        probed.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=probed)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PipelineError(
            f"{key}={folder} is not writable ({exc.strerror or exc}), so this stage could save nothing. "
            f"Fix: set {key} to a writable folder, or fix that folder's permissions or mount") from None


def keep_headlines_with_the_run(params: Params, argv: Sequence[str]) -> None:
    """A run sent elsewhere by hand (paths.output=... on the command line, paths.metrics not) keeps its headline
    figures beside its outputs (<output>/exp_metrics), not in the repository's git-tracked metrics/ folder,
    which describes the run params.yaml configures."""
    given = [arg.split("=", 1)[0] for arg in argv if "=" in arg]
    if "paths.output" in given and "paths.metrics" not in given:
        params.paths.metrics = str(params.output_dir / "exp_metrics")
        log.info("paths.output is set on the command line: headline metrics go to %s (paths.metrics=... to choose)",
                 params.paths.metrics)


def run_stage(main: Callable[[Params], None], description: str, argv: Sequence[str] | None = None) -> int:
    """Parse params, run `main(params)`, and turn expected failures into a one-paragraph message + exit 2.

    Hugging Face libraries are kept offline first (no stage downloads anything; a backbone must be a local
    folder or in the cache), and the output folder is checked for writing before any work.
    """
    force_offline()
    setup_logging()
    start = time.perf_counter()
    try:
        params = parse_cli(argv, description=description)
        keep_headlines_with_the_run(params, sys.argv[1:] if argv is None else argv)
        check_writable(params.output_dir)
        check_writable(params.metrics_dir, "paths.metrics", create=False)  # written after the work, if at all
        main(params)
    except (ParamsError, InputError, PipelineError, FileNotFoundError, WriteFailed) as exc:
        log.error("%s", exc)
        return 2
    except ModuleNotFoundError as exc:  # a library the stage imports late (torch, ...) is not in this python
        log.error("%s has no module %r; the project is installed in .venv. Fix: source .venv/bin/activate "
                  "(make install creates it), then run the command again", sys.executable, exc.name)
        return 2
    except Exception as exc:
        if not write_failure(exc):
            raise
        where = getattr(exc, "filename", None)
        log.error("%s", write_failed(Path(where), exc) if where else write_failed(params.output_dir, exc, folder=True))
        return 2
    try:
        record_runtime(params.output_dir, _stage_name(main), sys.argv[1:] if argv is None else argv,
                       time.perf_counter() - start)
    except OSError as exc:  # a read-only output folder must not fail a finished stage
        log.warning("runtime not recorded: %s", exc)
    return 0


def exit_with(main: Callable[[Params], None], description: str) -> None:
    """Entry point for a stage's run.py."""
    sys.exit(run_stage(main, description))
