"""Inference throughput: 05_infer's path vs a naive loop, on the same fold model and the same essays.

Naive: essays in file order, fixed batches of 8, every batch padded to max_length, fp32.
Ours: `predict_fold_model` as 05_infer runs it: length-sorted batches under a token budget, dynamic
padding, inference_mode (and fp16 autocast on CUDA). Both predict every essay with the first fold model
of each model the demo trained (run `make demo` first); the predictions are checked to agree.
Figures at the model's own max_length and at 1024 (the competition setting: most essays are shorter,
so fixed padding wastes most of the compute).

    .venv/bin/python benchmarks/infer_bench.py [--output output] [--essays 360]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.core.devices import inference_devices
from common.infer.inference import predict_fold_model
from common.models import EssayScorer
from common.models.tokenization import EssayCollator, load_tokenizer, tokenize_essays

REPO = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def naive(fold_dir: Path, ids: list[list[int]], pad_id: int, max_length: int, batch_size: int = 8) -> np.ndarray:
    model = EssayScorer.load(fold_dir)
    out = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        input_ids = torch.full((len(rows), max_length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        scores, _ = model.predict(input_ids, mask)
        out.append(scores.numpy())
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output", help="output folder of a finished demo run")
    parser.add_argument("--essays", type=int, default=360)
    args = parser.parse_args()
    train_dir = REPO / args.output / "train"
    fold_dirs = sorted(p for p in train_dir.glob("*/folds/fold_0") if (p / "scorer.json").is_file())
    if not fold_dirs:
        print(f"no trained fold models under {train_dir}: run `make demo` first; skipped")
        return 0
    texts = pd.read_csv(REPO / "input" / "train.csv")["full_text"].head(args.essays).tolist()
    devices = inference_devices("auto")
    print(f"{len(texts)} demo essays; device {devices[0]}; torch threads {torch.get_num_threads()}")
    for fold_dir in fold_dirs:
        spec = json.loads((fold_dir / "train_config.json").read_text())["model"]
        tokenizer = load_tokenizer(str(fold_dir), add_newline_tokens=spec["add_newline_tokens"])
        for max_length in sorted({spec["max_length"], 1024}):
            ids = tokenize_essays(tokenizer, texts, max_length)
            start = time.perf_counter()
            slow = naive(fold_dir, ids, tokenizer.pad_token_id, max_length)
            naive_s = time.perf_counter() - start
            start = time.perf_counter()
            fast, _ = predict_fold_model(fold_dir, ids, EssayCollator(tokenizer), devices, "auto", 16384)
            fast_s = time.perf_counter() - start
            gap = float(np.max(np.abs(fast - slow)))
            padding = 1 - sum(len(x) for x in ids) / (len(ids) * max_length)
            print(f"{fold_dir.parents[1].name} max_length {max_length} (fixed padding wastes {padding:.0%}):")
            print(f"  naive (fixed padding, file order, fp32)  {len(ids) / naive_s:8.1f} essays/s")
            print(f"  05_infer path                             {len(ids) / fast_s:8.1f} essays/s")
            print(f"  speed-up {naive_s / fast_s:.2f}x (target >= 3x); max |prediction gap| {gap:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
