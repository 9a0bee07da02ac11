"""Tests of common/models/parts/heads.py: shapes, predictions, probabilities, what training makes of each head, dropout."""

from __future__ import annotations

import pytest
import torch

from common.models.parts.heads import HEADS
from common.models.parts.losses import loss_for

IN_DIM = 8
N_LOGITS = {"regression": 1, "classification": 6, "ordinal": 5}
BUILT_IN = ["regression", "classification", "ordinal"]
WITH_HYBRID = [*BUILT_IN, "hybrid"]  # the regression head with an auxiliary classification head


def build_head(kind: str, in_dim: int = IN_DIM, dropout: float = 0.1, n_dropout_samples: int = 1):
    return HEADS.build(kind, in_dim, dropout, n_dropout_samples)


def toy_problem(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first column decides the score 1..6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    y = (x[:, 0] * 1.3 + 3.5).round().clamp(1, 6)
    return x, y


def trained_head(kind: str, x: torch.Tensor, y: torch.Tensor, steps: int = 200):
    """The head after `steps` SGD steps on its default loss, in eval mode."""
    torch.manual_seed(0)
    head = build_head(kind, dropout=0.0)
    loss = loss_for(kind)()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(head, head(x), y).backward()
        optimizer.step()
    return head.eval()


@pytest.mark.parametrize("kind", BUILT_IN)
def test_logit_shapes(kind: str) -> None:
    head = build_head(kind, IN_DIM)
    assert head(torch.randn(4, IN_DIM)).shape == (4, N_LOGITS[kind])


def test_the_registry_holds_the_built_in_heads_with_their_losses() -> None:
    assert list(HEADS)[:3] == BUILT_IN
    assert {k: HEADS[k].default_loss for k in BUILT_IN} == {
        "regression": "mse", "classification": "cross_entropy", "ordinal": "cumulative_bce"}
    assert {k: HEADS[k].gives_probs for k in BUILT_IN} == {"regression": False, "classification": True, "ordinal": True}


@pytest.mark.parametrize("kind", BUILT_IN)
def test_predictions_and_probabilities(kind: str) -> None:
    head = build_head(kind, IN_DIM)
    with torch.no_grad():
        head.fc.weight.normal_(0.0, 10.0)  # extreme logits included
        logits = head(torch.randn(64, IN_DIM))
    pred = head.predict(logits)
    probs = head.probs(logits)
    assert pred.shape == (64,)
    if kind == "regression":
        assert probs is None
        torch.testing.assert_close(pred, logits[:, 0])
        return
    assert probs.shape == (64, 6) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(64))
    torch.testing.assert_close(pred, probs @ torch.arange(1.0, 7.0), atol=1e-5, rtol=1e-5)
    assert pred.std() > 0.5  # the logits move the prediction: not a constant in the middle of the scale


@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_a_trained_head_predicts_the_scores_it_was_trained_on(kind: str) -> None:
    x, y = toy_problem(256)
    untrained = build_head(kind, dropout=0.0).eval()
    head = trained_head(kind, x, y)
    x_new, y_new = toy_problem(256, seed=1)  # fresh essays from the same rule
    with torch.no_grad():
        pred, before = head.predict(head(x_new)), untrained.predict(untrained(x_new))
    error, error_before = (pred - y_new).abs().mean().item(), (before - y_new).abs().mean().item()
    assert error < 0.4 and error_before > 0.9
    assert torch.corrcoef(torch.stack([pred, y_new]))[0, 1] > 0.9
    by_score = torch.stack([pred[y_new == score].mean() for score in range(1, 7)])
    assert (by_score.diff() > 0.3).all(), by_score  # essays of each higher score get clearly higher predictions


def test_regression_starts_near_the_mean_score() -> None:
    head = build_head("regression", IN_DIM).eval()
    assert head.fc.bias.item() == 3.0
    assert (head.predict(head(0.01 * torch.randn(16, IN_DIM))) - 3.0).abs().max() < 0.1


def test_ordinal_head_is_rank_consistent_whatever_its_parameters() -> None:
    torch.manual_seed(0)
    head = build_head("ordinal", IN_DIM, dropout=0.0)
    with torch.no_grad():
        head.bias_first.fill_(-1.0)
        head.bias_gaps.copy_(torch.tensor([-6.0, 3.0, -2.0, 0.5]))  # tiny and large steps alike
        head.fc.weight.normal_(0.0, 5.0)
    greater = torch.sigmoid(head(torch.randn(200, IN_DIM)))  # P(score > k), k = 1..5
    assert (greater[:, 1:] <= greater[:, :-1]).all()
    biases = head.biases()
    assert (biases[1:] < biases[:-1]).all()
    assert head.predict(head(torch.zeros(1, IN_DIM))).item() == pytest.approx(1.0 + torch.sigmoid(biases).sum().item())


@pytest.mark.parametrize("kind", WITH_HYBRID)
def test_multi_sample_dropout_is_random_in_training_only(kind: str) -> None:
    torch.manual_seed(0)
    head = build_head(kind, IN_DIM, dropout=0.5, n_dropout_samples=4)
    x = torch.randn(6, IN_DIM)
    head.train()
    assert not torch.equal(head(x), head(x))
    head.eval()
    first = head(x)
    assert torch.equal(first, head(x))
    no_dropout = build_head(kind, IN_DIM, dropout=0.0)
    no_dropout.load_state_dict(head.state_dict())
    torch.testing.assert_close(first, no_dropout.eval()(x))


def test_multi_sample_dropout_averages_the_passes() -> None:
    head = build_head("classification", IN_DIM, dropout=0.3, n_dropout_samples=3).train()
    x = torch.randn(5, IN_DIM)
    torch.manual_seed(7)
    averaged = head(x)
    torch.manual_seed(7)
    passes = [head.fc(head.dropout(x)) for _ in range(3)]
    torch.testing.assert_close(averaged, torch.stack(passes).mean(0))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown head 'poisson'; choose one of regression, classification, ordinal"):
        build_head("poisson", IN_DIM)
    with pytest.raises(ValueError, match="n_dropout_samples"):
        build_head("regression", IN_DIM, n_dropout_samples=0)
    with pytest.raises(ValueError, match="dropout"):
        build_head("ordinal", IN_DIM, dropout=1.0)
