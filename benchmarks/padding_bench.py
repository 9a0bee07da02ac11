"""Training throughput: dynamic padding with length-grouped batches vs padding every batch to max_length.

The same demo essays (input/train.csv), the tiny DeBERTa-v2 backbone (AutoModel, fp32, CPU) with a
mean-pooled linear head, the same forward + backward + AdamW steps over the same essays in each run,
timed after a few warm-up steps on other essays: (a) random batches padded to max_length, (b)
`LengthGroupedSampler` batches padded by `EssayCollator` to their longest essay. The two runs' steps
are interleaved, so that a slow spell of a shared machine slows both alike. Reports real (non-pad)
tokens per second, the share of padding in each, and the speed-up (target >= 2x).

    .venv/bin/python benchmarks/padding_bench.py [--steps 30] [--batch-size 8] [--max-length 512 1024]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as transformers_logging

from common.models.batching import LengthGroupedSampler
from common.models.tokenization import EssayCollator, load_tokenizer, tokenize_essays

REPO = Path(__file__).resolve().parents[1]
BACKBONE = REPO / "input" / "tiny-deberta-v2"
WARMUP_STEPS = 3


class MeanPoolRegressor(nn.Module):
    """The backbone, mean pooling over real tokens, a linear score."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.backbone = AutoModel.from_pretrained(BACKBONE, dtype=torch.float32)
        self.backbone.resize_token_embeddings(vocab_size)
        self.head = nn.Linear(self.backbone.config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)


class Run:
    """One configuration: its own model and AdamW, the time and tokens of its timed steps."""

    def __init__(self, collator: EssayCollator, vocab_size: int):
        torch.manual_seed(0)
        self.model = MeanPoolRegressor(vocab_size).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.collator = collator
        self.seconds = 0.0
        self.real = self.padded = 0

    def step(self, rows: list[int], ids: list[list[int]], scores: np.ndarray, timed: bool) -> None:
        start = time.perf_counter()
        batch = self.collator([{"input_ids": ids[i], "target": float(scores[i])} for i in rows])
        prediction = self.model(batch["input_ids"], batch["attention_mask"])
        nn.functional.mse_loss(prediction, batch["targets"]).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.seconds += time.perf_counter() - start
            self.real += int(batch["attention_mask"].sum())
            self.padded += batch["attention_mask"].numel()


def compare(tokenizer, train: pd.DataFrame, max_length: int, steps: int, size: int) -> None:
    """Both runs at one max_length, on the same essays; prints tokens/s, padding and the speed-up."""
    ids = tokenize_essays(tokenizer, train["full_text"].tolist(), max_length)
    scores = train["score"].to_numpy(dtype=float)
    n_warm, n = WARMUP_STEPS * size, steps * size
    if n_warm + n > len(ids):
        raise SystemExit(f"{len(ids)} essays in input/train.csv: too few for {WARMUP_STEPS} + {steps} steps of {size}")
    shuffled = np.random.default_rng(0).permutation(len(ids))
    warm, essays = shuffled[:n_warm], shuffled[n_warm : n_warm + n]  # both runs time exactly these essays
    warmup = [warm[i : i + size].tolist() for i in range(0, n_warm, size)]
    naive = [essays[i : i + size].tolist() for i in range(0, n, size)]
    order = essays[list(LengthGroupedSampler([len(ids[i]) for i in essays], size, seed=0))]
    grouped = [order[i : i + size].tolist() for i in range(0, n, size)]
    runs = {
        "(a) pad to max_length, random batches": (Run(EssayCollator(tokenizer, pad_to_multiple_of=max_length),
                                                      len(tokenizer)), naive),
        "(b) dynamic padding, length-grouped": (Run(EssayCollator(tokenizer), len(tokenizer)), grouped),
    }
    for run, _ in runs.values():
        for rows in warmup:
            run.step(rows, ids, scores, timed=False)
    for i in range(steps):  # steps interleaved: a slow spell of a shared machine slows both runs alike
        for run, batches in runs.values():
            run.step(batches[i], ids, scores, timed=True)
    print(f"max_length {max_length} ({sum(len(ids[i]) == max_length for i in essays)} of {n} essays truncated):")
    for name, (run, _) in runs.items():
        print(f"  {name:38s} {run.real / run.seconds:7.0f} real tokens/s  padding {1 - run.real / run.padded:5.1%}"
              f"  {run.seconds:5.1f} s")
    base, ours = (run.real / run.seconds for run, _ in runs.values())
    print(f"  speed-up: {ours / base:.2f}x (target >= 2x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    train = pd.read_csv(REPO / "input" / "train.csv")
    tokenizer = load_tokenizer(str(BACKBONE), add_newline_tokens=True)
    print(f"{len(train)} demo essays; tiny DeBERTa-v2, fp32, CPU ({torch.get_num_threads()} threads); batch "
          f"{args.batch_size}; {args.steps} timed steps after {WARMUP_STEPS} warm-up steps on other essays")
    for max_length in args.max_length:
        compare(tokenizer, train, max_length, args.steps, args.batch_size)


if __name__ == "__main__":
    main()
