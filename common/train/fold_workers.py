"""Fold workers: several folds of one model at once, one process per GPU, each a plain single-fold run of the
stage (`train_in_workers`), its log in the model's checkpoint folder and its latest line on the console.

A worker is bound to die with the stage (`start_worker`); a fold whose lock another live process holds
(common.train.locks) is not started.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import yaml

from common.config.layout import checkpoint_dir, fold_units
from common.config.loader import plain
from common.config.params import Params
from common.config.stage import INSIDE_STAGE
from common.train.engine import TrainingError
from common.train.locks import busy_lock

log = logging.getLogger(__name__)

# What torchrun / accelerate launch set: a fold worker is a plain single process, so it gets none of it.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                       "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def worker_devices(device: str, workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES value of each worker slot (None: leave it as it is, i.e. CPU workers)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible else [
            str(i) for i in range(torch.cuda.device_count())]
        n = workers or len(gpus)
        if n > len(gpus):
            raise TrainingError(f"train.fold_workers={workers} but only {len(gpus)} GPU(s) are visible ({gpus}); "
                                "use at most one worker per GPU, or 0 for one per visible GPU")
        return gpus[:n]
    return [None] * max(workers, 1)


PROGRESS_EVERY = 60.0
"""Seconds between the console lines that say where each fold worker is (its log's latest line)."""


def latest_progress(log_file: Path, width: int = 160) -> str:
    """The last non-empty line of a worker's log, where a progress bar's latest update counts as a line (tqdm
    rewrites its bar after a carriage return), cut to `width` characters; "" before the log holds any."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [part.strip() for part in tail.replace("\r", "\n").split("\n") if part.strip()]
    return lines[-1][:width] if lines else ""


def train_in_workers(params: Params, name: str, folds: list[int], script: Path) -> None:
    """Train `folds` of model `name` in parallel processes (`python <script> ...`, one fold each).

    Each worker is a plain single-fold, single-process run of the stage with the same params (written to
    <out>/checkpoints/<name>/params.yaml), its own GPU on CUDA or, on CPU, the thread count a serial run has (so
    both train to the same bits), and its log appended to <out>/checkpoints/<name>/fold_<k>.log. Every
    PROGRESS_EVERY seconds the console gets one line per running fold: its log's latest line (progress bar or
    message). Workers die with the stage (`start_worker`). A fold whose lock a live process holds is not started
    (its log is that process's). A failed fold does not stop the others; the stage then fails naming it, and a
    re-run trains only what is missing.
    """
    import torch
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out, spec = params.output_dir, params.train.all_models[name]
    slots = worker_devices(params.train.device, params.train.fold_workers)[: len(folds)]
    work = checkpoint_dir(out, name, 0).parent
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(plain(params), sort_keys=False), encoding="utf-8")
    # A serial run's thread count: a CPU reduction split over other threads rounds otherwise (by ~1e-7).
    threads = params.train.num_threads or torch.get_num_threads()
    queue, running, failed, busy = list(folds), {}, [], []
    log.info("%s: training folds %s with %d workers (%s); their logs: %s", name, folds, len(slots),
             ", ".join(f"GPU {s}" for s in slots) if slots[0] is not None
             else f"CPU, {threads} threads each, as a serial run has",
             ", ".join(str(work / f"fold_{fold}.log") for fold in folds))
    shown = time.monotonic()
    def stop(signum, frame):  # a killed stage takes its workers with it (the finally below)
        raise TrainingError(f"{name}: stopped by signal {signum}; the running folds were stopped too")

    previous = signal.signal(signal.SIGTERM, stop)
    # Log lines go through tqdm while the folds bar shows: each on a line of its own, the bar drawn again below it.
    with logging_redirect_tqdm(), tqdm(total=len(folds), desc=f"{name} folds", unit="fold") as progress:
        try:
            while queue or running:
                for slot, gpu in enumerate(slots):
                    if slot in running or not queue:
                        continue
                    fold = queue.pop(0)
                    holders = [m for u in fold_units(spec, [fold], params.seed) if (m := busy_lock(
                        checkpoint_dir(out, name, u.fold, u.seed), f"{name} {u.label}")) is not None]
                    if holders:  # its log is that process's: not started, nothing truncated
                        log.error("%s", "\n".join(holders))
                        busy.append(fold)
                        continue
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.resolve().parents[1]),
                                                                        os.environ.get("PYTHONPATH", "")])}
                    for variable in _LAUNCHER_VARIABLES:
                        env.pop(variable, None)
                    env = {k: v for k, v in env.items() if not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}
                    env[INSIDE_STAGE] = script.resolve().parent.name  # its runtime is inside this stage's
                    if gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = gpu
                    cmd = [sys.executable, str(script), "--params", str(params_file), f"train.model={name}",
                           f"train.folds=[{fold}]", "train.step=fit", "train.fold_workers=1",
                           f"train.num_threads={threads}"]
                    proc, handle = start_worker(cmd, env, work / f"fold_{fold}.log")
                    running[slot] = (fold, proc, handle)
                    log.info("%s fold %d: started on %s, log %s", name, fold,
                             f"GPU {gpu}" if gpu is not None else "CPU", work / f"fold_{fold}.log")
                for slot, (fold, proc, handle) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    handle.close()
                    del running[slot]
                    progress.update(1)
                    log.info("%s fold %d: worker finished (exit %d); its last line: %s", name, fold, proc.returncode,
                             latest_progress(work / f"fold_{fold}.log"))
                    if proc.returncode:
                        failed.append(fold)
                        tail = (work / f"fold_{fold}.log").read_text(encoding="utf-8").splitlines()[-15:]
                        log.error("%s fold %d failed (exit %d); end of %s:\n%s", name, fold, proc.returncode,
                                  work / f"fold_{fold}.log", "\n".join(tail))
                if running and time.monotonic() - shown >= PROGRESS_EVERY:
                    shown = time.monotonic()
                    for fold, _, _ in sorted(running.values(), key=lambda job: job[0]):
                        log.info("%s fold %d: %s", name, fold, latest_progress(work / f"fold_{fold}.log") or "starting")
                time.sleep(0.5)
        finally:
            signal.signal(signal.SIGTERM, previous)
            for _, proc, handle in running.values():
                proc.terminate()
                proc.wait()
                handle.close()
    if busy:
        raise TrainingError(f"{name}: fold(s) {sorted(busy)} are being trained by another process (above), so they were "
                            "not started" + (f", and fold(s) {sorted(failed)} failed in their workers (logs in {work})"
                                             if failed else "") + "; the others are kept. Wait for that process or "
                            "stop it, then re-run: only the missing folds train again.")
    if failed:
        raise TrainingError(f"{name}: fold(s) {sorted(failed)} failed in their workers (logs in {work}); the others "
                            "are kept. Fix the cause and re-run: only the missing folds train again.")


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal the kernel sends a process when the thread that started it ends (Linux)."""


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when this process dies, however it dies (SIGKILL and the
    out-of-memory killer included, where no handler or `finally` runs); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)

    return preexec


def start_worker(cmd: list[str], env: dict[str, str] | None, log_file: Path) -> tuple[subprocess.Popen, IO[str]]:
    """Start a fold worker, its output appended to `log_file` (never truncated: a process of an earlier run may
    still write there), and bound to die with this process (`_die_with_parent`). The caller closes the handle."""
    handle = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (the caller closes it)
    handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: started by process {os.getpid()}\n")
    handle.flush()
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent()), handle
