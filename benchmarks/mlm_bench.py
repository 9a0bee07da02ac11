"""MLM domain adaptation of the tiny backbone on the demo essays: held-out loss before and after, speed.

Adapts the tiny DeBERTa-v2 (random weights, so a high learning rate) on essays drawn from input/train.csv
and the persuade demo corpus (exact duplicates used once), with 5% of the essays held out and measured
on the same fixed masks before and after. The naive baseline it is compared with is the unadapted model
itself: the ratio after / before is the figure (< 1 is better; ln(vocab) is a uniform guess). Also
prints how many tokens truncating to max_length, as fine-tuning does, would have thrown away: chunking
keeps them all. CPU, one torch thread by default (the shared 2-core machine's other jobs make more
threads slower).

    .venv/bin/python benchmarks/mlm_bench.py [--essays 600] [--max-length 256] [--epochs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers.utils import logging as transformers_logging

from common.core.logs import setup_logging
from common.models.tokenization import load_tokenizer
from common.train.mlm import adapt_backbone
from common.train.mlm_corpus import essay_chunks

REPO = Path(__file__).resolve().parents[1]
BACKBONE = REPO / "input" / "tiny-deberta-v2"
CSVS = ("train.csv", "persuade_2.0_human_scores_demo_id_github.csv")


def demo_essays(n: int, seed: int) -> list[str]:
    """n essays drawn at random from the demo's train and corpus files."""
    texts = pd.concat([pd.read_csv(REPO / "input" / name, usecols=["full_text"]) for name in CSVS])["full_text"]
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return texts.iloc[order].astype(str).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--essays", type=int, default=600, help="Essays to adapt on (before duplicates go).")
    parser.add_argument("--max-length", type=int, default=256, help="Chunk length in tokens.")
    parser.add_argument("--epochs", type=float, default=2.0, help="Passes over the training chunks.")
    parser.add_argument("--batch-size", type=int, default=16, help="Chunks per step.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate (the tiny random model's).")
    parser.add_argument("--whole-word-masking", action="store_true", help="Mask whole words.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the essay draw and of the adaptation.")
    args = parser.parse_args()
    setup_logging("WARNING")
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    texts = demo_essays(args.essays, args.seed)
    tokenizer = load_tokenizer(str(BACKBONE), add_newline_tokens=True)
    chunks = essay_chunks(tokenizer, texts, args.max_length)
    text_tokens = np.bincount(chunks.essay_index, weights=[sum(w >= 0 for w in words) for words in chunks.words])
    room = args.max_length - sum(w < 0 for w in chunks.words[0])  # max_length less the special tokens
    truncation_keeps = np.minimum(text_tokens, room).sum() / text_tokens.sum()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = adapt_backbone(
            str(BACKBONE), texts, Path(tmp) / "adapted", max_length=args.max_length, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, whole_word_masking=args.whole_word_masking,
            seed=args.seed, device="cpu",
        )
    before, after = metrics["held_out_loss_before"], metrics["held_out_loss_after"]
    essays_per_s = metrics["n_train_essays"] * args.epochs / metrics["train_seconds"]
    print(f"{metrics['n_essays']} unique demo essays ({metrics['n_duplicates_dropped']} duplicates dropped): "
          f"{metrics['n_train_essays']} train, {metrics['n_held_out_essays']} held out; "
          f"{metrics['n_chunks']} chunks of <= {args.max_length} tokens")
    print(f"tiny DeBERTa-v2, CPU, {torch.get_num_threads()} thread(s); {metrics['steps']} steps of "
          f"{args.batch_size} chunks, {args.epochs:g} epochs, lr {args.lr:g}, "
          f"{'whole-word' if args.whole_word_masking else 'token'} masking")
    print(f"truncating to max_length, as fine-tuning does, would keep {truncation_keeps:.1%} of the "
          f"{int(text_tokens.sum())} text tokens; chunking keeps 100% ({len(chunks) / len(texts):.2f} chunks an essay)")
    print(f"held-out MLM loss (nats/masked token, {metrics['held_out_masked_tokens']} fixed masks): "
          f"before {before:.4f}, after {after:.4f}; after/before {after / before:.3f}; "
          f"uniform guess ln(vocab) {math.log(metrics['vocab_size']):.4f}")
    print(f"speed: {essays_per_s:.1f} essays/s, {metrics['train_tokens_seen'] / metrics['train_seconds']:.0f} "
          f"tokens/s training; {metrics['seconds']:.0f} s end to end")


if __name__ == "__main__":
    main()
