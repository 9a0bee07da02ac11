"""Origin matching against the corpus and duplicate groups."""

import numpy as np

from common.prepare.duplicates import connected_groups, duplicate_pairs, match_origin, normalize_text

TOPIC = ["venus", "planet", "surface", "atmosphere", "spacecraft", "temperature", "pressure", "nasa", "danger", "explore"]


def word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(4, 9))))


def essays(n: int, seed: int = 0, words: int = 120) -> list[str]:
    """Distinct essays on one topic: shared topic words plus essay-specific rare words."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        own = [word(rng) for _ in range(8)]
        rare = [word(rng) for _ in range(40)]
        body = list(rng.choice(TOPIC + own + rare + ["the", "and", "is", "we"], size=words))
        out.append(" ".join(body[:60]) + ".\n\n" + " ".join(body[60:]) + ".")
    return out


def test_normalize_ignores_case_unicode_and_whitespace():
    assert normalize_text("  Dear  Senator,\n\nCars\u00a0are BAD. \n") == "dear senator, cars are bad."


def test_exact_match_after_whitespace_changes():
    base = essays(3)
    variant = base[1].replace("\n\n", "\n").replace(" ", "\u00a0", 3) + "   "
    pairs = duplicate_pairs([*base, variant])
    assert list(zip(pairs.left, pairs.right, strict=True)) == [(1, 3)]
    assert pairs.similarity[0] == 1.0


def test_near_duplicate_found_and_same_topic_essays_not_matched():
    base = essays(20)
    words = base[5].split(" ")
    words[10], words[40], words[70] = "changed", "words", "here"
    near = " ".join(words)
    pairs = duplicate_pairs([*base, near], threshold=0.9)
    assert list(zip(pairs.left, pairs.right, strict=True)) == [(5, 20)]
    assert 0.9 <= pairs.similarity[0] < 1.0


def test_threshold_controls_near_duplicates():
    base = essays(2)
    words = base[0].split(" ")
    half = " ".join(words[: len(words) // 2])
    assert len(duplicate_pairs([base[0], half], threshold=0.95)) == 0
    assert len(duplicate_pairs([base[0], half], threshold=0.5)) == 1


def test_connected_groups_joins_chains():
    pairs = duplicate_pairs(["a b c d", "e f g h", "A B C D", "a  b c d"])
    groups = connected_groups(4, pairs)
    assert groups.tolist() == [0, 1, 0, 0]


def test_match_origin():
    texts = essays(12, seed=1)
    train = texts[:6]
    corpus = [
        texts[0].replace("\n\n", "\n"),  # train 0, whitespace changed
        texts[2].upper(),  # train 2, case changed
        texts[2],  # a second copy of train 2
        *texts[6:10],  # corpus only
        texts[9] + " ",  # corpus-only duplicate of the previous one
    ]
    match = match_origin(train, corpus)
    assert match.origin.tolist() == ["persuade", "other", "persuade", "other", "other", "other"]
    assert match.corpus_index[0] == 0 and match.corpus_index[2] in (1, 2)
    assert match.corpus_index[1] == -1
    assert match.n_exact == 2 and match.n_near == 0
    # External keeps corpus-only essays once, never the copies of train essays.
    assert match.corpus_keep.tolist() == [False, False, False, True, True, True, True, False]
    assert len(set(match.train_groups.tolist())) == 6


def test_train_duplicates_share_a_group_even_through_the_corpus():
    texts = essays(5, seed=2)
    train = [texts[0], texts[1], texts[0] + "\n", texts[3]]
    match = match_origin(train, [texts[4]])
    g = match.train_groups
    assert g[0] == g[2] and len({g[0], g[1], g[3]}) == 3


def test_every_train_copy_of_a_corpus_essay_is_matched():
    texts = essays(4, seed=3)
    train = [texts[0], texts[1], texts[0]]  # rows 0 and 2 are the same essay
    match = match_origin(train, [texts[0].replace("\n\n", "\n"), texts[3]])
    assert match.origin.tolist() == ["persuade", "other", "persuade"]
    assert match.corpus_index.tolist() == [0, -1, 0]
    assert match.n_exact == 2 and match.n_near == 0
