"""Deterministic synthetic demo data with the real competition schemas.

`make_demo_frames` builds a small stand-in for the Automated Essay Scoring 2.0 files -- `train.csv`,
`test.csv`, `sample_submission.csv` and the PERSUADE 2.0 corpus
(`persuade_2.0_human_scores_demo_id_github.csv`) -- and `write_demo_data` writes them as CSV, so the
whole pipeline runs on CPU in minutes without the competition data. The fake data keeps the traits
that the pipeline has to cope with:

- 15 corpus prompts with their real names, each with its own topic vocabulary, so that text
  clustering recovers the prompt; train essays answer the first 7 of them.
- About three quarters of train essays ("persuade" origin) are also in the corpus with the same score,
  a different id space and whitespace differences; the other quarter ("other" origin) answer only 5
  prompts and score lower; test essays look like the other-origin ones.
- The score is learnable from the text (length, paragraphs, vocabulary, spelling, transitions) but
  noisy, so that word count alone reaches a QWK of about 0.6.
- A few exact and near duplicates inside train (under different ids) and inside the corpus.

Everything is drawn from one `numpy.random.default_rng(seed)`: the same seed gives byte-identical files.
The prompts are in common.tools.demo_prompts, the essay writer in common.tools.demo_essays; this module
draws the rows (origins, scores, duplicates, ids, the corpus) and writes the files.
Run `python -m common.tools.demo --out input --seed 7` to regenerate the bundled demo.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.tools.demo_essays import _choice, _essay, _near_duplicate, _whitespace_variant
from common.tools.demo_prompts import _TRAIN_PROMPT_WEIGHTS, OTHER_PROMPTS, PROMPTS, Prompt

logger = logging.getLogger(__name__)

DEMO_FILES: dict[str, str] = {
    "train": "train.csv",
    "test": "test.csv",
    "sample_submission": "sample_submission.csv",
    "persuade": "persuade_2.0_human_scores_demo_id_github.csv",
}
"""Key of each frame written by `write_demo_data` -> its file name (the competition's names)."""

PERSUADE_COLUMNS: tuple[str, ...] = (
    "essay_id_comp",
    "full_text",
    "holistic_essay_score",
    "word_count",
    "prompt_name",
    "task",
    "assignment",
    "source_text",
    "gender",
    "grade_level",
    "ell_status",
    "economically_disadvantaged",
    "student_disability_status",
    "race_ethnicity",
)

SCORES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
TRAIN_SCORE_SHARES: tuple[float, ...] = (0.07, 0.27, 0.36, 0.23, 0.06, 0.01)
"""Share of each score 1..6 in the real train.csv; the demo train matches it."""
OTHER_SCORE_SHARES: tuple[float, ...] = (0.12, 0.36, 0.34, 0.15, 0.03, 0.0)
"""Score shares of other-origin essays: lower than the corpus ones, as in the real data."""
PERSUADE_FRACTION = 0.75
"""Share of train essays that are also in the corpus."""
PERSUADE_SCORE_SHARES: tuple[float, ...] = tuple(
    (t - (1 - PERSUADE_FRACTION) * o) / PERSUADE_FRACTION
    for t, o in zip(TRAIN_SCORE_SHARES, OTHER_SCORE_SHARES, strict=True)
)
"""Score shares of corpus essays, chosen so that the train mix of both origins has TRAIN_SCORE_SHARES."""

N_EXACT_DUPLICATES = 4
N_NEAR_DUPLICATES = 4
N_CORPUS_NEAR_DUPLICATES = 2


def _allocate(n: int, shares: Sequence[float]) -> np.ndarray:
    """Split n into integer counts proportional to shares (largest remainder; ties go to the first)."""
    raw = np.asarray(shares, dtype=float) / float(np.sum(shares)) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _shuffled_labels(rng: np.random.Generator, labels: Sequence, shares: Sequence[float], n: int) -> list:
    """n labels in exact proportions to shares, in a random order."""
    counts = _allocate(n, shares)
    out = [label for label, count in zip(labels, counts, strict=True) for _ in range(count)]
    return [out[i] for i in rng.permutation(n)]


def _unique_ids(rng: np.random.Generator, n: int, width: int, upper: bool, taken: set[str]) -> list[str]:
    """n new hex ids of the given width, none of them in taken (which is updated)."""
    ids: list[str] = []
    while len(ids) < n:
        value = int(rng.integers(0, 16**width))
        essay_id = f"{value:0{width}X}" if upper else f"{value:0{width}x}"
        if essay_id not in taken:
            taken.add(essay_id)
            ids.append(essay_id)
    return ids


def _demographics(rng: np.random.Generator, prompt: Prompt) -> dict[str, object]:
    grades = (9, 10, 11, 12) if prompt.task == "Text dependent" else (6, 7, 8, 9, 10)
    return {
        "gender": _choice(rng, ("M", "F")),
        "grade_level": int(grades[int(rng.integers(len(grades)))]),
        "ell_status": "Yes" if rng.random() < 0.1 else "No",
        "economically_disadvantaged": (
            "Economically disadvantaged" if rng.random() < 0.45 else "Not economically disadvantaged"
        ),
        "student_disability_status": (
            "Identified as having disability"
            if rng.random() < 0.12
            else "Not identified as having disability"
        ),
        "race_ethnicity": _choice(
            rng,
            (
                "White",
                "White",
                "Hispanic/Latino",
                "Black/African American",
                "Asian/Pacific Islander",
                "Two or more races/Other",
                "American Indian/Alaskan Native",
            ),
        ),
    }


def _corpus_row(rng: np.random.Generator, essay_id: str, text: str, prompt: Prompt, score: int) -> dict:
    return {
        "essay_id_comp": essay_id,
        "full_text": text,
        "holistic_essay_score": score,
        "word_count": len(text.split()),
        "prompt_name": prompt.name,
        "task": prompt.task,
        "assignment": prompt.assignment,
        "source_text": prompt.source_text,
        **_demographics(rng, prompt),
    }


def make_demo_frames(
    seed: int = 7, n_train: int = 360, n_test: int = 48, n_corpus_only: int = 420
) -> dict[str, pd.DataFrame]:
    """Build the demo data in memory.

    Returns a dict with one DataFrame per key of DEMO_FILES (the columns of the competition files) plus
    "truth", which no file holds: one row per train and test essay with `essay_id, split, origin,
    prompt_name, score, essay_id_comp, duplicate_of, duplicate_kind` -- what the pipeline must recover
    (origin, prompt, duplicate groups), for tests. `essay_id_comp` is the matching corpus id of a
    persuade-origin train essay; `duplicate_of` names the train essay that an exact ("exact") or
    lightly edited ("near") copy was made from. Test scores in "truth" are the hidden labels.
    """
    if n_train < 40 or n_test < 1 or n_corpus_only < 2 * N_CORPUS_NEAR_DUPLICATES:
        raise ValueError(
            f"demo sizes too small: n_train={n_train} (>= 40), n_test={n_test} (>= 1), "
            f"n_corpus_only={n_corpus_only} (>= {2 * N_CORPUS_NEAR_DUPLICATES})"
        )
    rng = np.random.default_rng(seed)
    by_name = {p.name: p for p in PROMPTS}
    other_prompts = [by_name[name] for name in OTHER_PROMPTS]
    origins, scores, prompts, texts = _train_essays(rng, n_train, other_prompts)
    duplicate_of, duplicate_kind = _add_duplicates(rng, origins, scores, prompts, texts)
    taken: set[str] = set()
    train_ids = _unique_ids(rng, n_train, 7, upper=False, taken=taken)
    test_ids = _unique_ids(rng, n_test, 7, upper=False, taken=taken)
    persuade, essay_id_comp = _corpus(rng, origins, scores, prompts, texts, n_corpus_only)

    # Test: like the other-origin essays.
    test_scores = _shuffled_labels(rng, SCORES, OTHER_SCORE_SHARES, n_test)
    test_prompts = _shuffled_labels(rng, other_prompts, [1.0] * len(other_prompts), n_test)
    test_texts = [_essay(rng, p, s) for p, s in zip(test_prompts, test_scores, strict=True)]

    train = pd.DataFrame({"essay_id": train_ids, "full_text": texts, "score": scores})
    test = pd.DataFrame({"essay_id": test_ids, "full_text": test_texts})
    truth = pd.DataFrame(
        {
            "essay_id": train_ids + test_ids,
            "split": ["train"] * n_train + ["test"] * n_test,
            "origin": origins + ["other"] * n_test,
            "prompt_name": [p.name for p in prompts] + [p.name for p in test_prompts],
            "score": scores + test_scores,
            "essay_id_comp": essay_id_comp + [""] * n_test,
            "duplicate_of": [train_ids[j] if j is not None else "" for j in duplicate_of] + [""] * n_test,
            "duplicate_kind": duplicate_kind + [""] * n_test,
        }
    )
    train = train.sort_values("essay_id", kind="stable").reset_index(drop=True)
    test = test.sort_values("essay_id", kind="stable").reset_index(drop=True)
    truth = truth.sort_values(["split", "essay_id"], ascending=[False, True], kind="stable")
    sample_submission = pd.DataFrame({"essay_id": test["essay_id"], "score": 3})
    return {
        "train": train,
        "test": test,
        "sample_submission": sample_submission,
        "persuade": persuade,
        "truth": truth.reset_index(drop=True),
    }


def _train_essays(rng: np.random.Generator, n_train: int, other_prompts: list[Prompt]
                  ) -> tuple[list[str], list[int], list[Prompt], list[str]]:
    """Persuade-origin rows on 7 prompts, other-origin rows on 5 prompts with lower scores."""
    n_persuade = round(PERSUADE_FRACTION * n_train)
    n_other = n_train - n_persuade
    origins = ["persuade"] * n_persuade + ["other"] * n_other
    scores = _shuffled_labels(rng, SCORES, PERSUADE_SCORE_SHARES, n_persuade) + _shuffled_labels(
        rng, SCORES, OTHER_SCORE_SHARES, n_other
    )
    prompts = _shuffled_labels(rng, PROMPTS[:7], _TRAIN_PROMPT_WEIGHTS, n_persuade) + _shuffled_labels(
        rng, other_prompts, [1.0] * len(other_prompts), n_other
    )
    texts = [_essay(rng, prompt, score) for prompt, score in zip(prompts, scores, strict=True)]
    return origins, scores, prompts, texts


def _add_duplicates(rng: np.random.Generator, origins: list[str], scores: list[int], prompts: list[Prompt],
                    texts: list[str]) -> tuple[list[int | None], list[str]]:
    """Overwrite some rows (in place) with a copy -- exact, or a few words changed -- of another row of the
    same origin, prompt and score, so the score distribution stays as allocated; returns, per row, the row
    it copies (or None) and the kind of copy."""
    n_train = len(texts)
    duplicate_of: list[int | None] = [None] * n_train
    duplicate_kind = [""] * n_train
    n_dups = N_EXACT_DUPLICATES + N_NEAR_DUPLICATES
    order = [int(i) for i in rng.permutation(n_train)]
    for k, src in enumerate(order[:n_dups]):
        twin = next(
            (
                i
                for i in order[n_dups:]
                if duplicate_of[i] is None and origins[i] == origins[src] and scores[i] == scores[src]
            ),
            None,
        )
        if twin is None:
            continue
        prompts[twin] = prompts[src]
        exact = k < N_EXACT_DUPLICATES
        texts[twin] = texts[src] if exact else _near_duplicate(rng, texts[src])
        duplicate_of[twin] = src
        duplicate_kind[twin] = "exact" if exact else "near"
    return duplicate_of, duplicate_kind


def _corpus(rng: np.random.Generator, origins: list[str], scores: list[int], prompts: list[Prompt],
            texts: list[str], n_corpus_only: int) -> tuple[pd.DataFrame, list[str]]:
    """One corpus row per distinct persuade-origin train text (whitespace changed), then corpus-only rows;
    returns the corpus and each train row's corpus id ("" for other-origin rows)."""
    n_train = len(texts)
    corpus_rows: list[dict] = []
    corpus_id_of_text: dict[str, str] = {}
    essay_id_comp = [""] * n_train
    persuade_rows = [i for i in range(n_train) if origins[i] == "persuade"]
    corpus_ids = _unique_ids(rng, len(persuade_rows) + n_corpus_only, 12, upper=True, taken=set())
    for i in persuade_rows:
        if texts[i] not in corpus_id_of_text:
            corpus_id = corpus_ids[len(corpus_rows)]
            corpus_id_of_text[texts[i]] = corpus_id
            variant = _whitespace_variant(rng, texts[i])
            corpus_rows.append(_corpus_row(rng, corpus_id, variant, prompts[i], scores[i]))
        essay_id_comp[i] = corpus_id_of_text[texts[i]]
    corpus_scores = _shuffled_labels(rng, SCORES, PERSUADE_SCORE_SHARES, n_corpus_only)
    corpus_prompts = _shuffled_labels(rng, PROMPTS, [1.0] * len(PROMPTS), n_corpus_only)
    corpus_texts = [_essay(rng, p, s) for p, s in zip(corpus_prompts, corpus_scores, strict=True)]
    for k in range(N_CORPUS_NEAR_DUPLICATES):
        corpus_texts[n_corpus_only - 1 - k] = _near_duplicate(rng, corpus_texts[k])
        corpus_prompts[n_corpus_only - 1 - k] = corpus_prompts[k]
        corpus_scores[n_corpus_only - 1 - k] = corpus_scores[k]
    for text, prompt, score in zip(corpus_texts, corpus_prompts, corpus_scores, strict=True):
        corpus_rows.append(_corpus_row(rng, corpus_ids[len(corpus_rows)], text, prompt, score))
    persuade = pd.DataFrame(corpus_rows, columns=list(PERSUADE_COLUMNS))
    return persuade.iloc[rng.permutation(len(persuade))].reset_index(drop=True), essay_id_comp


def write_demo_data(
    out_dir: Path, seed: int = 7, n_train: int = 360, n_test: int = 48, n_corpus_only: int = 420
) -> dict[str, Path]:
    """Write the demo CSVs into out_dir (created if missing); returns key of DEMO_FILES -> path written.

    Each file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    frames = make_demo_frames(seed=seed, n_train=n_train, n_test=n_test, n_corpus_only=n_corpus_only)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, file_name in DEMO_FILES.items():
        path = out_dir / file_name
        tmp = path.with_name(f"{path.name}.tmp-{seed}")
        frames[key].to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
        tmp.replace(path)
        paths[key] = path
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m common.tools.demo --out input --seed 7`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("input"), help="Folder to write the CSVs into.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the generator.")
    parser.add_argument("--n-train", type=int, default=360, help="Train essays.")
    parser.add_argument("--n-test", type=int, default=48, help="Test essays.")
    parser.add_argument("--n-corpus-only", type=int, default=420, help="Corpus essays that are not in train.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = write_demo_data(args.out, args.seed, args.n_train, args.n_test, args.n_corpus_only)
    for path in paths.values():
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


if __name__ == "__main__":
    main()
