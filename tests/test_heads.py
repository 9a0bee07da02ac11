"""Tests of common/models/heads.py: shapes, losses (hard and soft), KL, predictions, probabilities, dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.models.heads import HEADS, build_head, kl_divergence

IN_DIM = 8
N_LOGITS = {"regression": 1, "classification": 6, "ordinal": 5}
HEAD_VARIANTS = [("regression", "mse"), ("regression", "smooth_l1"), ("classification", "mse"), ("ordinal", "mse")]


def toy_problem(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first column decides the score 1..6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    y = (x[:, 0] * 1.3 + 3.5).round().clamp(1, 6)
    return x, y


def soft_labels(y: torch.Tensor, confidence: float = 0.7) -> torch.Tensor:
    """Most of the mass on the true score, the rest spread evenly."""
    one_hot = F.one_hot(y.long() - 1, 6).float()
    return one_hot * confidence + (1 - confidence) / 6


def sgd_losses(kind: str, regression_loss: str, target: torch.Tensor, x: torch.Tensor, steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    head = build_head(kind, IN_DIM, dropout=0.0, regression_loss=regression_loss)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = head.loss(head(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", HEADS)
def test_logit_shapes(kind: str) -> None:
    head = build_head(kind, IN_DIM)
    assert head(torch.randn(4, IN_DIM)).shape == (4, N_LOGITS[kind])


@pytest.mark.parametrize(("kind", "regression_loss"), HEAD_VARIANTS)
def test_hard_score_loss_decreases_under_sgd(kind: str, regression_loss: str) -> None:
    x, y = toy_problem()
    losses = sgd_losses(kind, regression_loss, y, x)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(("kind", "regression_loss"), HEAD_VARIANTS)
def test_soft_label_loss_decreases_under_sgd(kind: str, regression_loss: str) -> None:
    x, y = toy_problem()
    soft = soft_labels(y)
    losses = sgd_losses(kind, regression_loss, soft, x)
    floor = 0.0  # the least loss possible: 0 but for ordinal BCE, whose floor is the targets' entropy
    if kind == "ordinal":
        events = build_head("ordinal", IN_DIM).cumulative_targets(soft)
        floor = F.binary_cross_entropy(events, events).item()
    assert losses[-1] - floor < 0.7 * (losses[0] - floor)


@pytest.mark.parametrize(("kind", "regression_loss"), HEAD_VARIANTS)
def test_one_hot_soft_labels_give_the_hard_loss(kind: str, regression_loss: str) -> None:
    x, y = toy_problem(16)
    head = build_head(kind, IN_DIM, dropout=0.0, regression_loss=regression_loss)
    logits = head(x)
    torch.testing.assert_close(head.loss(logits, soft_labels(y, confidence=1.0)), head.loss(logits, y))


def test_soft_regression_target_is_the_expected_score() -> None:
    head = build_head("regression", IN_DIM, dropout=0.0)
    logits = torch.tensor([[2.0], [5.0]])
    soft = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])  # E = 2.5 and 5
    assert head.loss(logits, soft).item() == pytest.approx((0.5**2 + 0.0) / 2)


def test_kl_divergence_matches_hand_computed_values() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
    q = torch.tensor([[0.25, 0.25, 0.5, 0.0, 0.0, 0.0]])
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.25) = ln 2; classes with p = 0 add nothing, even where q = 0
    assert kl_divergence(p, q.log()).item() == pytest.approx(0.6931472, rel=1e-6)
    p2 = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    # row 1: 0.2 ln 0.4 + 0.8 ln 1.6 = -0.1832581 + 0.3760035 = 0.1927454; row 2: 0; batch mean 0.0963727
    assert kl_divergence(p2, q2.log()).item() == pytest.approx(0.0963727, rel=1e-5)


@pytest.mark.parametrize("kind", ["classification", "ordinal"])
def test_kl_loss_compares_the_labels_with_the_heads_distribution(kind: str) -> None:
    head = build_head(kind, IN_DIM, dropout=0.0)
    logits = head(torch.randn(5, IN_DIM))
    probs = head.probs(logits).detach()
    assert head.kl_loss(logits, probs).item() == pytest.approx(0.0, abs=1e-5)
    soft = soft_labels(torch.tensor([1.0, 2.0, 3.0, 5.0, 6.0]))
    torch.testing.assert_close(head.kl_loss(logits, soft), kl_divergence(soft, head.probs(logits).log()))
    assert head.kl_loss(logits, soft).item() > 0


def test_regression_kl_loss_is_mse_on_the_expected_score() -> None:
    head = build_head("regression", IN_DIM)
    logits = torch.tensor([[3.0], [4.0]])
    soft = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]])  # E = 3 and 5.5
    assert head.kl_loss(logits, soft).item() == pytest.approx((0.0 + 1.5**2) / 2)


@pytest.mark.parametrize("kind", HEADS)
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
    assert ((pred >= 1.0) & (pred <= 6.0)).all()
    torch.testing.assert_close(pred, probs @ torch.arange(1.0, 7.0), atol=1e-5, rtol=1e-5)


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


def test_ordinal_cumulative_targets() -> None:
    head = build_head("ordinal", IN_DIM)
    hard = head.cumulative_targets(torch.tensor([1.0, 4.0, 6.0]))
    torch.testing.assert_close(hard, torch.tensor([[0.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0], [1.0] * 5]))
    soft = head.cumulative_targets(torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(soft, torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("kind", HEADS)
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
    with pytest.raises(ValueError, match="choose one of regression, classification, ordinal"):
        build_head("poisson", IN_DIM)
    with pytest.raises(ValueError, match="regression_loss"):
        build_head("regression", IN_DIM, regression_loss="huber")
    with pytest.raises(ValueError, match="n_dropout_samples"):
        build_head("regression", IN_DIM, n_dropout_samples=0)
    head = build_head("classification", IN_DIM)
    with pytest.raises(ValueError, match="soft labels of shape"):
        head.loss(head(torch.randn(3, IN_DIM)), torch.ones(3, 5))
