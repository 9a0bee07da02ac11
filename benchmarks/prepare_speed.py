"""00_prepare at the real competition's size: 20,000 train + 26,000 corpus essays of real length.

Generates demo-style essays at that scale (lengthened to ~450 words, the real mean is ~420), runs the
stage through its command line and prints the wall time against the 3-minute target. It also times
the near-duplicate search against a naive baseline in the same run: the all-pairs cosine on full
TF-IDF vectors (every word kept), on a subsample both can afford.

    .venv/bin/python benchmarks/prepare_speed.py [--n-train 20000] [--n-corpus 26000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from common.prepare.duplicates import duplicate_pairs, normalize_text
from common.tools.demo import DEMO_FILES, make_demo_frames

REPO = Path(__file__).resolve().parents[1]


def lengthen(text: str) -> str:
    """Append the essay's own sentences in a shuffled order, seeded by its normalised text.

    Copies of one essay (exact or differing in whitespace only) are lengthened the same way.
    """
    flat = " ".join(text.split())
    rng = np.random.default_rng(zlib.crc32(flat.encode()))
    sentences = [s for s in flat.split(". ") if s]
    return text + "\n\n" + ". ".join(rng.permutation(sentences).tolist())


def naive_pairs(texts: list[str], threshold: float) -> int:
    """Baseline: full-vocabulary TF-IDF, one dense all-pairs similarity matrix."""
    x = TfidfVectorizer(sublinear_tf=True).fit_transform([normalize_text(t) for t in texts])
    sims = (x @ x.T).toarray()
    return int((np.triu(sims, 1) >= threshold).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-corpus", type=int, default=26000)
    parser.add_argument("--n-test", type=int, default=3000)
    parser.add_argument("--baseline-n", type=int, default=12000, help="essays in the naive-vs-ours timing")
    args = parser.parse_args()

    start = time.perf_counter()
    n_corpus_only = max(10, args.n_corpus - round(0.75 * args.n_train))
    frames = make_demo_frames(seed=3, n_train=args.n_train, n_test=args.n_test, n_corpus_only=n_corpus_only)
    for key in ("train", "test", "persuade"):
        frames[key]["full_text"] = frames[key]["full_text"].map(lengthen)
    words = frames["train"]["full_text"].str.split().str.len()
    print(
        f"data: {len(frames['train'])} train, {len(frames['persuade'])} corpus, {len(frames['test'])} test "
        f"essays, mean {words.mean():.0f} words (generated in {time.perf_counter() - start:.0f} s)"
    )

    texts = frames["train"]["full_text"].tolist()[: args.baseline_n]
    t0 = time.perf_counter()
    ours = len(duplicate_pairs(texts))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = naive_pairs(texts, 0.9)
    t_naive = time.perf_counter() - t0
    print(
        f"near-duplicate search on {len(texts)} essays: ours {t_ours:.1f} s ({ours} pairs), "
        f"naive full-vocabulary all-pairs {t_naive:.1f} s ({naive} pairs): {t_naive / t_ours:.1f}x faster"
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "input"
        folder.mkdir()
        for key, name in DEMO_FILES.items():
            frames[key].to_csv(folder / name, index=False)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "00_prepare/run.py", f"paths.input={folder}", f"paths.output={tmp}/output",
             f"paths.metrics={tmp}/metrics"],
            cwd=REPO,
            check=True,
        )
        seconds = time.perf_counter() - t0
    verdict = "meets" if seconds < 180 else "MISSES"
    print(f"00_prepare end to end: {seconds:.0f} s ({seconds / 180:.2f} of the 180 s target: {verdict} it)")


if __name__ == "__main__":
    main()
