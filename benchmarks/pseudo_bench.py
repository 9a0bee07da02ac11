"""Pseudo-labels on the demo: OOF QWK without them, two-stage pseudo -> real, and concatenated.

One run on the bundled demo (input/), in a temporary output folder, through the stage scripts:
00_prepare; the teacher (tiny-regression) on every fold; 01_pseudo_label (fold k's teacher labels the
external essays for fold k); then the same model config as the teacher trained as a student three ways:
two_stage, concat (pseudo rows weighted pseudo_weight), and two_stage on the MLM-adapted backbone. The
teacher itself is the no-pseudo-label baseline. Prints OOF QWK (rounded) on all rows and on other-origin
rows, and the gains over the baseline.

    .venv/bin/python benchmarks/pseudo_bench.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = "tiny-regression"
# Each variant is a student with the teacher's config and pseudo-labels as the variant asks.
TEACHER_CONFIG = ("max_length: 384, lr: 0.002, head_lr: 0.005, layerwise_lr_decay: 1.0, eval_every: 10, "
                  "stages: [{rows: all, epochs: 3.0}]")
TWO_STAGE = "stages: [{rows: pseudo, epochs: 1.0}, {rows: all, epochs: 3.0}]"
VARIANTS = {
    "two_stage": TWO_STAGE,
    "concat": "stages: [{rows: all, epochs: 3.0, with_pseudo: true}], pseudo_weight: 0.5",
    "two_stage + MLM backbone": f"{TWO_STAGE}, mlm: {{epochs: 2.0, max_length: 256, lr: 0.001}}",
}


def run(script: str, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="output folder to keep (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pseudo_bench_"))
    common = [f"paths.output={out}", f"paths.metrics={out}/exp_metrics"]
    run("00_prepare/run.py", *common)
    seconds = {"teacher": run("02_train/run.py", *common, f"train.model={TEACHER}")}
    figures = {"no pseudo-labels (teacher)": json.loads((out / "train" / TEACHER / "metrics.json").read_text())}
    for i, (variant, settings) in enumerate(VARIANTS.items()):
        name = f"student-{i}"
        student = [f"train.students={{{name}: {{teacher: {TEACHER}, {TEACHER_CONFIG}, {settings}}}}}",
                   f"train.model={name}"]
        seconds[f"{variant} pseudo-labels"] = run("01_pseudo_label/run.py", *common, *student)
        seconds[variant] = run("02_train/run.py", *common, *student)
        figures[variant] = json.loads((out / "train" / name / "metrics.json").read_text())
    mlm = figures["two_stage + MLM backbone"]["mlm"]
    print(f"demo: {out}; MLM held-out loss {mlm['held_out_loss_before']:.3f} -> {mlm['held_out_loss_after']:.3f}")
    base = figures["no pseudo-labels (teacher)"]
    print(f"{'variant':30s} {'OOF QWK':>8s} {'other':>8s} {'gain':>8s}")
    for variant, m in figures.items():
        other = m["qwk_rounded_other"]
        print(f"{variant:30s} {m['qwk_rounded']:8.4f} {other if other is None else f'{other:8.4f}':>8} "
              f"{m['qwk_rounded'] - base['qwk_rounded']:+8.4f}")
    print("seconds:", {k: round(v) for k, v in seconds.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
