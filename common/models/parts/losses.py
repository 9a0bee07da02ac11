"""Training losses: (head, logits, target) -> a scalar, for hard scores and soft labels alike.

`target` is either hard scores, (batch,) floats in 1..6, or soft labels, (batch, 6) probabilities over
the scores 1..6 (pseudo-labels). Every loss computes in fp32 and averages over the batch.

- mse / smooth_l1: MSE or SmoothL1 between the head's predicted score and the target score; soft labels
  count through their expected score. Any head (the default of the regression head).
- cross_entropy: cross-entropy of the 6 class logits against hard scores; against soft labels the KL
  divergence (soft cross-entropy less the labels' entropy: same gradients). Classification head.
- cumulative_bce: binary cross-entropy on the ordinal head's 5 events "score > k" (soft labels: the
  events' probabilities under the distribution). Ordinal head.
- smoothed_cross_entropy: cross-entropy against the target distribution with LABEL_SMOOTHING of its mass
  moved to the neighbouring scores (a 4 is close to a 3 and a 5, far from a 1). Classification head.
- focal: focal loss -sum_c p_c (1 - q_c)^FOCAL_GAMMA log q_c, which weighs down the essays already scored
  confidently (hard scores: p one-hot). Classification head.
- hybrid: MSE of the hybrid head's score plus HYBRID_AUX_WEIGHT x the cross-entropy (KL for soft labels) of
  its auxiliary class logits: regression and classification trained together. Hybrid head.
- ordinal_kl: KL divergence between the target distribution and the ordinal head's distribution over the
  scores (P(score = k) from its cumulative logits): a proper distribution loss for soft labels. Ordinal head.
- qwk: a QWK-shaped loss on the predicted scores of the batch, sum (pred - y)^2 over the sum of (pred_i - y_j)^2
  over all pairs / n: one minus it is the QWK of continuous scores, so lowering it raises the batch's kappa.
  Any head.

A new loss is a `Loss` subclass under `@LOSSES.register("name")` that implements `compute`; `heads`
names the head classes it works with (checked when the scorer's settings are built).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.models.parts.heads import (
    HEADS,
    N_SCORES,
    ClassificationHead,
    Head,
    HybridHead,
    OrdinalHead,
    score_values,
)
from common.models.parts.registry import Registry

LOSSES: Registry[Loss] = Registry("loss")


def kl_divergence(p_target: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c), averaged over rows ("batchmean"), with 0 log 0 = 0.

    Args:
        p_target: target probabilities, (batch, classes), rows summing to 1.
        log_q: log-probabilities of the predicted distribution, (batch, classes).
    Returns:
        A scalar in nats.
    """
    p = p_target.to(torch.float32)
    log_q = log_q.to(torch.float32).clamp(min=torch.finfo(torch.float32).min)  # p = 0 and log q = -inf -> 0
    return (torch.xlogy(p, p) - p * log_q).sum(dim=-1).mean()


def expected_score(target: torch.Tensor) -> torch.Tensor:
    """Hard scores (batch,) unchanged; soft labels (batch, 6) -> their expected score (batch,)."""
    target = target.to(torch.float32)
    return target if target.ndim == 1 else target @ score_values(target)


def cumulative_targets(target: torch.Tensor) -> torch.Tensor:
    """P(score > k), k = 1..5, (batch, 5): 0/1 for hard scores, from the distribution for soft labels."""
    target = target.to(torch.float32)
    if target.ndim == 2:
        return (1.0 - torch.cumsum(target, dim=-1)[:, : N_SCORES - 1]).clamp(0.0, 1.0)
    thresholds = torch.arange(1, N_SCORES, dtype=torch.float32, device=target.device)
    return (target.round().unsqueeze(-1) > thresholds).to(torch.float32)


class Loss:
    """Base loss: `loss(head, logits, target)` checks the target's shape, then `compute`s a scalar.

    `heads`: the head classes (subclasses included) the loss works with.
    """

    heads: tuple[type[Head], ...] = (Head,)

    def __call__(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = logits.shape[0]
        if target.shape not in ((batch,), (batch, N_SCORES)):
            raise ValueError(
                f"target must be hard scores of shape ({batch},) or soft labels of shape ({batch}, {N_SCORES}); "
                f"got {tuple(target.shape)}"
            )
        return self.compute(head, logits, target)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar loss of `head`'s `logits` against `target` (shape already checked)."""
        raise NotImplementedError


@LOSSES.register("mse")
class MeanSquaredError(Loss):
    """MSE between the predicted score and the target score (soft labels: their expected score)."""

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(head.predict(logits), expected_score(target))


@LOSSES.register("smooth_l1")
class SmoothL1(Loss):
    """SmoothL1 (Huber with delta 1) between the predicted score and the target score."""

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(head.predict(logits), expected_score(target))


@LOSSES.register("cross_entropy")
class CrossEntropy(Loss):
    """Cross-entropy on the class logits for hard scores; KL(soft || softmax) for soft labels."""

    heads = (ClassificationHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.to(torch.float32)
        if target.ndim == 2:
            return kl_divergence(target, F.log_softmax(logits, dim=-1))
        return F.cross_entropy(logits, target.round().long() - 1)


@LOSSES.register("cumulative_bce")
class CumulativeBCE(Loss):
    """Binary cross-entropy of the ordinal logits against the events "score > k" (`cumulative_targets`)."""

    heads = (OrdinalHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.to(torch.float32), cumulative_targets(target))


LABEL_SMOOTHING = 0.1
FOCAL_GAMMA = 2.0


def _distribution(target: torch.Tensor) -> torch.Tensor:
    """Soft labels (batch, 6) as they are; hard scores as one-hot distributions."""
    if target.ndim == 2:
        return target.to(torch.float32)
    return F.one_hot(target.round().long() - 1, N_SCORES).to(torch.float32)


@LOSSES.register("smoothed_cross_entropy")
class SmoothedCrossEntropy(Loss):
    """Cross-entropy against the target distribution with LABEL_SMOOTHING of each score's mass shared by its
    neighbouring scores (the edge scores give it all to their one neighbour)."""

    heads = (ClassificationHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothed = _distribution(target) @ _neighbour_smoothing(logits.device)
        return -(smoothed * F.log_softmax(logits.to(torch.float32), dim=-1)).sum(dim=-1).mean()


def _neighbour_smoothing(device: torch.device) -> torch.Tensor:
    """(6, 6) row-stochastic matrix: row k keeps 1 - LABEL_SMOOTHING on score k and shares the rest equally
    between its neighbouring scores."""
    matrix = torch.zeros(N_SCORES, N_SCORES, device=device)
    for k in range(N_SCORES):
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < N_SCORES]
        matrix[k, k] = 1.0 - LABEL_SMOOTHING
        matrix[k, neighbours] = LABEL_SMOOTHING / len(neighbours)
    return matrix


@LOSSES.register("focal")
class Focal(Loss):
    """Focal loss: cross-entropy whose terms are weighted by (1 - q_c)^FOCAL_GAMMA (soft labels as weights)."""

    heads = (ClassificationHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(logits.to(torch.float32), dim=-1)
        weight = (1.0 - log_q.exp()).pow(FOCAL_GAMMA)
        return -(_distribution(target) * weight * log_q).sum(dim=-1).mean()


@LOSSES.register("qwk")
class QWKShaped(Loss):
    """sum_i (pred_i - y_i)^2 / (sum_ij (pred_i - y_j)^2 / n) on the predicted and target scores of the batch."""

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, goal = head.predict(logits), expected_score(target)
        observed = (pred - goal).pow(2).sum()
        expected = (pred.unsqueeze(1) - goal.unsqueeze(0)).pow(2).sum() / pred.numel()
        return observed / expected.clamp(min=1e-6)


HYBRID_AUX_WEIGHT = 0.5
"""Weight of the auxiliary classification term of the `hybrid` loss relative to the score's MSE."""


@LOSSES.register("hybrid")
class Hybrid(Loss):
    """MSE of the score plus HYBRID_AUX_WEIGHT x cross-entropy (soft labels: KL) of the auxiliary class logits."""

    heads = (HybridHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        regression = F.mse_loss(head.predict(logits), expected_score(target))
        log_q = F.log_softmax(head.class_logits(logits).to(torch.float32), dim=-1)
        if target.ndim == 2:
            classes = kl_divergence(target, log_q)
        else:
            classes = F.nll_loss(log_q, target.round().long() - 1)
        return regression + HYBRID_AUX_WEIGHT * classes


@LOSSES.register("ordinal_kl")
class OrdinalKL(Loss):
    """KL(target distribution || the ordinal head's P(score = k)); hard scores are one-hot distributions."""

    heads = (OrdinalHead,)

    def compute(self, head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = head.probs(logits)
        return kl_divergence(_distribution(target), torch.log(q.clamp(min=1e-8)))


def loss_for(head: str, loss: str = "") -> type[Loss]:
    """The loss class `head` trains with: `loss` by name, or the head's `default_loss` when `loss` is empty.

    ValueError when either name is not registered or the loss does not work with that head.
    """
    HEADS.check(head)
    name = loss or HEADS[head].default_loss
    LOSSES.check(name)
    cls = LOSSES[name]
    if not issubclass(HEADS[head], cls.heads):
        fits = [n for n, h in HEADS.items() if issubclass(h, cls.heads)]
        raise ValueError(f"loss {name!r} works with the {' or '.join(fits)} head only, not {head!r}; choose another "
                         f"loss or leave loss empty for the head's default ({HEADS[head].default_loss!r})")
    return cls
