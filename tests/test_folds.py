"""Fold invariants: every essay once, duplicates together, balanced scores, prompt hold-out."""

import numpy as np
import pandas as pd
import pytest

from common.prepare.folds import fold_summary, make_folds


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    n = 600
    scores = rng.choice([1, 2, 3, 4, 5, 6], size=n, p=[0.07, 0.27, 0.36, 0.23, 0.06, 0.01])
    groups = np.arange(n)
    # 40 duplicate pairs and 10 triples.
    groups[300:340] = groups[340:380]
    groups[380:390] = groups[390:400]
    groups[400:410] = groups[390:400]
    scores[300:340] = scores[340:380]
    clusters = rng.integers(0, 7, size=n)
    origins = np.where(rng.random(n) < 0.75, "persuade", "other")
    return scores, groups, clusters, origins


def test_every_essay_in_exactly_one_fold(table):
    folds = make_folds(*table, n_folds=5, seed=1)
    assert folds.shape == (600,)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    assert np.bincount(folds).min() >= 100


def test_duplicates_never_straddle_folds(table):
    scores, groups, *_ = table
    folds = make_folds(*table, n_folds=5, seed=1)
    assert (pd.DataFrame({"g": groups, "f": folds}).groupby("g")["f"].nunique() == 1).all()
    assert fold_summary(folds, scores, groups)["duplicate_groups_split"] == 0


def test_scores_origin_and_prompts_are_balanced(table):
    scores, _, clusters, origins = table
    folds = make_folds(*table, n_folds=5, seed=1)
    for values, tol in ((scores, 0.025), (clusters, 0.04), (origins, 0.03)):
        shares = pd.crosstab(folds, values, normalize="index")
        overall = pd.Series(values).value_counts(normalize=True)
        assert (shares - overall).abs().max().max() < tol


def test_same_seed_same_folds_and_other_seed_differs(table):
    a = make_folds(*table, n_folds=5, seed=1)
    assert np.array_equal(a, make_folds(*table, n_folds=5, seed=1))
    assert not np.array_equal(a, make_folds(*table, n_folds=5, seed=2))


def test_group_by_prompt_holds_out_whole_prompts(table):
    scores, groups, clusters, origins = table
    folds = make_folds(scores, groups, clusters, origins, n_folds=3, seed=1, group_by="prompt")
    assert (pd.DataFrame({"c": clusters, "f": folds}).groupby("c")["f"].nunique() == 1).all()
    assert set(folds.tolist()) == {0, 1, 2}


def test_group_by_prompt_needs_enough_prompts(table):
    scores, groups, clusters, origins = table
    with pytest.raises(ValueError, match=r"lower prepare\.n_folds to 7"):
        make_folds(scores, groups, clusters, origins, n_folds=8, seed=1, group_by="prompt")


def test_bad_fold_count(table):
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(*table, n_folds=1, seed=1)
