"""Trains one fold of the tiny backbone and writes the held-out predictions; run by test_data_parallel.

    python tests/ddp_worker.py OUT_DIR BATCH_SIZE          (one process)
    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR BATCH_SIZE   (two CPU processes, gloo)
"""

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.config.model_params import ModelParams, ScorerParams, StageParams
from common.tools.demo import make_demo_frames
from common.train.rows import tokenize_train
from common.train.training import train_fold

REPO = Path(__file__).resolve().parents[1]


def main(out: Path, batch_size: int) -> None:
    torch.set_num_threads(1)
    frames = make_demo_frames(seed=5, n_train=64, n_test=2, n_corpus_only=10)
    train = frames["train"]
    table = pd.DataFrame({"essay_id": train["essay_id"], "score": train["score"],
                          "fold": np.arange(len(train)) % 4, "origin": "other"})
    # No dropout anywhere, so one process and two processes see the same computation.
    spec = replace(ModelParams(name="ddp"), max_length=48, stages=[StageParams(epochs=1.0)], batch_size=batch_size,
                   effective_batch_size=16, lr=1e-3, head_lr=5e-3, warmup_ratio=0.0, scheduler="constant",
                   scorer=ScorerParams(dropout=0.0), add_newline_tokens=False)
    backbone = str(out / "backbone")
    tokenizer, data = tokenize_train(spec, backbone, table, train["full_text"].tolist())
    result = train_fold(spec, backbone, tokenizer, data, 0, out / "model", out / "ckpt", seed=1, device="cpu")
    if int(os.environ.get("RANK", "0")) == 0:
        result.oof.to_csv(out / "oof.csv", index=False)
        (out / "processes.txt").write_text(str(result.metrics["processes"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
