"""Tests of common/models/parts/losses.py: each head's default loss against the formula it has always had, soft
labels, KL divergence, the ordinal events, training under SGD, and which loss goes with which head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.models.parts import losses as losses_module
from common.models.parts.heads import HEADS
from common.models.parts.losses import LOSSES, cumulative_targets, expected_score, kl_divergence, loss_for

IN_DIM = 8
SCORES = torch.arange(1.0, 7.0)
VARIANTS = [("regression", "mse"), ("regression", "smooth_l1"), ("classification", "cross_entropy"),
            ("classification", "mse"), ("ordinal", "cumulative_bce"), ("ordinal", "mse"),
            ("classification", "smoothed_cross_entropy"), ("classification", "focal"), ("regression", "qwk"),
            ("ordinal", "qwk"), ("hybrid", "hybrid"), ("hybrid", "mse"), ("ordinal", "ordinal_kl")]


def toy_problem(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first column decides the score 1..6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    return x, (x[:, 0] * 1.3 + 3.5).round().clamp(1, 6)


def soft_labels(y: torch.Tensor, confidence: float = 0.7) -> torch.Tensor:
    """Most of the mass on the true score, the rest spread evenly."""
    return F.one_hot(y.long() - 1, 6).float() * confidence + (1 - confidence) / 6


def head_and_logits(kind: str, n: int = 16, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    head = HEADS.build(kind, IN_DIM, 0.0, 1)
    x, y = toy_problem(n, seed)
    with torch.no_grad():
        head.fc.weight.normal_(0.0, 1.0)
    return head, head(x), y


# ---------------------------------------------------------------- the default losses, number for number


def test_regression_default_is_mse_on_the_score_and_on_the_expected_score_of_soft_labels() -> None:
    head, logits, y = head_and_logits("regression")
    soft = soft_labels(y)
    loss = loss_for("regression")()
    assert torch.equal(loss(head, logits, y), F.mse_loss(logits.float().squeeze(-1), y))
    assert torch.equal(loss(head, logits, soft), F.mse_loss(logits.float().squeeze(-1), soft @ SCORES))
    smooth = LOSSES.build("smooth_l1")
    assert torch.equal(smooth(head, logits, soft), F.smooth_l1_loss(logits.float().squeeze(-1), soft @ SCORES))


def test_classification_default_is_cross_entropy_and_kl_for_soft_labels() -> None:
    head, logits, y = head_and_logits("classification")
    soft = soft_labels(y)
    loss = loss_for("classification")()
    assert torch.equal(loss(head, logits, y), F.cross_entropy(logits.float(), y.long() - 1))
    log_q = F.log_softmax(logits.float(), dim=-1)
    assert torch.equal(loss(head, logits, soft), (torch.xlogy(soft, soft) - soft * log_q).sum(-1).mean())
    by_hand = (soft * (soft.log() - log_q)).sum(-1).mean()  # no zero labels here, so plain logs do
    torch.testing.assert_close(loss(head, logits, soft), by_hand)


def test_ordinal_default_is_bce_on_the_cumulative_events() -> None:
    head, logits, y = head_and_logits("ordinal")
    soft = soft_labels(y)
    loss = loss_for("ordinal")()
    events = (y.unsqueeze(-1) > torch.arange(1.0, 6.0)).float()
    assert torch.equal(loss(head, logits, y), F.binary_cross_entropy_with_logits(logits.float(), events))
    soft_events = (1.0 - soft.cumsum(-1)[:, :5]).clamp(0.0, 1.0)
    assert torch.equal(loss(head, logits, soft), F.binary_cross_entropy_with_logits(logits.float(), soft_events))


@pytest.mark.parametrize(("kind", "name"), VARIANTS)
def test_one_hot_soft_labels_give_the_hard_loss(kind: str, name: str) -> None:
    head, logits, y = head_and_logits(kind)
    loss = LOSSES.build(name)
    torch.testing.assert_close(loss(head, logits, soft_labels(y, confidence=1.0)), loss(head, logits, y))


def test_soft_regression_target_is_the_expected_score() -> None:
    head = HEADS.build("regression", IN_DIM, 0.0, 1)
    logits = torch.tensor([[2.0], [5.0]])
    soft = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])  # E = 2.5 and 5
    torch.testing.assert_close(expected_score(soft), torch.tensor([2.5, 5.0]))
    assert LOSSES.build("mse")(head, logits, soft).item() == pytest.approx((0.5**2 + 0.0) / 2)


def test_kl_divergence_matches_hand_computed_values() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
    q = torch.tensor([[0.25, 0.25, 0.5, 0.0, 0.0, 0.0]])
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.25) = ln 2; classes with p = 0 add nothing, even where q = 0
    assert kl_divergence(p, q.log()).item() == pytest.approx(0.6931472, rel=1e-6)
    p2 = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    # row 1: 0.2 ln 0.4 + 0.8 ln 1.6 = -0.1832581 + 0.3760035 = 0.1927454; row 2: 0; batch mean 0.0963727
    assert kl_divergence(p2, q2.log()).item() == pytest.approx(0.0963727, rel=1e-5)


def test_the_cross_entropy_of_the_heads_own_distribution_is_zero() -> None:
    head, logits, _ = head_and_logits("classification")
    probs = head.probs(logits).detach()
    assert LOSSES.build("cross_entropy")(head, logits, probs).item() == pytest.approx(0.0, abs=1e-5)


def test_cumulative_targets() -> None:
    hard = cumulative_targets(torch.tensor([1.0, 4.0, 6.0]))
    torch.testing.assert_close(hard, torch.tensor([[0.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0], [1.0] * 5]))
    soft = cumulative_targets(torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(soft, torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- training


def sgd_losses(kind: str, name: str, target: torch.Tensor, x: torch.Tensor, steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    head = HEADS.build(kind, IN_DIM, 0.0, 1)
    loss = LOSSES.build(name)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss(head, head(x), target)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses


@pytest.mark.parametrize(("kind", "name"), VARIANTS)
def test_hard_score_loss_decreases_under_sgd(kind: str, name: str) -> None:
    x, y = toy_problem()
    losses = sgd_losses(kind, name, y, x)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(("kind", "name"), VARIANTS)
def test_soft_label_loss_decreases_under_sgd(kind: str, name: str) -> None:
    x, y = toy_problem()
    soft = soft_labels(y)
    losses = sgd_losses(kind, name, soft, x)
    floor = 0.0  # the least loss possible: 0 but for BCE, whose floor is the soft events' entropy
    if name == "cumulative_bce":
        events = cumulative_targets(soft)
        floor = F.binary_cross_entropy(events, events).item()
    if name == "smoothed_cross_entropy":  # a cross-entropy: its floor is the smoothed labels' entropy
        smoothed = soft @ losses_module._neighbour_smoothing(soft.device)
        floor = -(smoothed * smoothed.log()).sum(-1).mean().item()
    assert losses[-1] - floor < 0.7 * (losses[0] - floor)


# ---------------------------------------------------------------- names and heads


def test_each_head_gets_its_default_or_a_loss_made_for_it() -> None:
    assert [loss_for(kind).__name__ for kind in ("regression", "classification", "ordinal")] == [
        "MeanSquaredError", "CrossEntropy", "CumulativeBCE"]
    assert loss_for("ordinal", "smooth_l1") is LOSSES["smooth_l1"]  # a loss on the predicted score fits any head
    with pytest.raises(ValueError, match="loss 'cumulative_bce' works with the ordinal head only, not 'regression'"):
        loss_for("regression", "cumulative_bce")
    with pytest.raises(ValueError, match="loss 'cross_entropy' works with the classification head only"):
        loss_for("ordinal", "cross_entropy")
    with pytest.raises(ValueError, match="unknown loss 'huber'; choose one of mse, smooth_l1, cross_entropy"):
        loss_for("regression", "huber")


def test_a_target_of_the_wrong_shape_is_rejected() -> None:
    head, logits, _ = head_and_logits("classification", n=3)
    with pytest.raises(ValueError, match="soft labels of shape"):
        LOSSES.build("cross_entropy")(head, logits, torch.ones(3, 5))


def test_smoothing_moves_mass_to_the_neighbouring_scores_only() -> None:
    head, _, _ = head_and_logits("classification")
    hard = torch.tensor([1.0, 3.0, 6.0])
    logits = torch.randn(3, 6)
    loss = LOSSES.build("smoothed_cross_entropy")(head, logits, hard)
    eps = losses_module.LABEL_SMOOTHING
    goal = torch.tensor([[1 - eps, eps, 0, 0, 0, 0], [0, eps / 2, 1 - eps, eps / 2, 0, 0], [0, 0, 0, 0, eps, 1 - eps]])
    assert loss.item() == pytest.approx(-(goal * F.log_softmax(logits, dim=-1)).sum(-1).mean().item(), rel=1e-6)
    assert loss.item() != pytest.approx(LOSSES.build("cross_entropy")(head, logits, hard).item(), rel=1e-3)


def test_focal_weighs_down_confident_essays() -> None:
    head, _, _ = head_and_logits("classification")
    confident, unsure = torch.tensor([[8.0, 0, 0, 0, 0, 0]]), torch.tensor([[0.5, 0, 0, 0, 0, 0]])
    y = torch.tensor([1.0])
    focal, ce = LOSSES.build("focal"), LOSSES.build("cross_entropy")
    ratio = lambda logits: (focal(head, logits, y) / ce(head, logits, y)).item()  # noqa: E731
    assert ratio(confident) < 1e-4 < ratio(unsure) < 1.0
    q = F.softmax(unsure, dim=-1)[0, 0]
    assert focal(head, unsure, y).item() == pytest.approx(-((1 - q) ** losses_module.FOCAL_GAMMA * q.log()).item(), rel=1e-6)


def test_qwk_loss_is_one_minus_the_kappa_of_continuous_scores() -> None:
    head = HEADS.build("regression", IN_DIM, 0.0, 1)
    pred, y = torch.tensor([1.5, 2.0, 3.5, 5.0, 6.0]), torch.tensor([1.0, 2.0, 4.0, 5.0, 6.0])
    loss = LOSSES.build("qwk")(head, pred.unsqueeze(-1), y).item()
    pairs = ((pred[:, None] - y[None, :]) ** 2).sum() / len(y)
    assert loss == pytest.approx(((pred - y) ** 2).sum().item() / pairs.item(), rel=1e-6)
    assert LOSSES.build("qwk")(head, y.unsqueeze(-1), y).item() == 0.0  # perfect agreement


def test_hybrid_is_the_score_mse_plus_the_auxiliary_cross_entropy() -> None:
    head, logits, y = head_and_logits("hybrid")
    expected = F.mse_loss(logits[:, 0], y) + losses_module.HYBRID_AUX_WEIGHT * F.cross_entropy(logits[:, 1:], y.long() - 1)
    torch.testing.assert_close(loss_for("hybrid")()(head, logits, y), expected)
    torch.testing.assert_close(head.predict(logits), logits[:, 0])  # the score is the regression output
    torch.testing.assert_close(head.probs(logits), torch.softmax(logits[:, 1:], dim=-1))


def test_ordinal_kl_is_the_kl_to_the_heads_distribution_over_scores() -> None:
    head, logits, y = head_and_logits("ordinal")
    soft = soft_labels(y)
    expected = kl_divergence(soft, head.probs(logits).log())
    torch.testing.assert_close(LOSSES.build("ordinal_kl")(head, logits, soft), expected)
    own = head.probs(logits).detach()
    assert LOSSES.build("ordinal_kl")(head, logits, own).item() == pytest.approx(0.0, abs=1e-5)
