"""Prediction heads on the pooled essay vector: regression, 6-way classification, ordinal (CORAL).

Every head turns the pooled vector, (batch, in_dim), into logits, and the logits into
- `predict(logits)`: a continuous score on the 1-6 scale, (batch,);
- `probs(logits)`: class probabilities over the scores 1..6, (batch, 6), or None (regression);
- `loss(logits, target)`: a scalar training loss, where `target` is either hard scores, (batch,) floats
  in 1..6, or soft labels, (batch, 6) probabilities over the scores 1..6 (pseudo-labels);
- `kl_loss(logits, soft)`: KL(soft || predicted distribution), for distillation on soft labels.

The kinds:
- regression: 1 logit, the score itself (bias starts at 3.0, near the mean score). Loss MSE or
  SmoothL1 against the score; soft labels count through their expected score.
- classification: 6 logits, one per score. Loss cross-entropy; for soft labels the KL divergence
  (soft cross-entropy less the labels' entropy: same gradients). Prediction: expected score under softmax.
- ordinal: CORAL (Cao, Mirjalili & Raschka 2020), 5 cumulative logits, logit_k = w.x + b_k for the
  events "score > k", k = 1..5, with one weight vector w shared by all five and biases constrained to
  b_1 > b_2 > ... > b_5. The constraint makes P(score > k) decrease with k for every essay, so the
  predictions are rank-consistent by construction (plain CORAL gets this only at its optimum). Loss:
  binary cross-entropy on the 5 events (soft labels: the events' probabilities under the
  distribution). Prediction: 1 + sum_k P(score > k), the expected score.

Multi-sample dropout: with `n_dropout_samples` > 1 the head averages its logits over that many dropout
masks in training; in eval mode dropout is off and the head runs once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("regression", "classification", "ordinal")
REGRESSION_LOSSES = ("mse", "smooth_l1")
N_SCORES = 6
INITIAL_SCORE = 3.0


def _score_values(like: torch.Tensor) -> torch.Tensor:
    """The scores 1..6 as a float32 vector on `like`'s device."""
    return torch.arange(1, N_SCORES + 1, dtype=torch.float32, device=like.device)


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
    return target if target.ndim == 1 else target @ _score_values(target)


class Head(nn.Module):
    """Base head: dropout (multi-sample in training) before a kind-specific map to logits."""

    def __init__(self, dropout: float, n_dropout_samples: int):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
        if n_dropout_samples < 1:
            raise ValueError(f"n_dropout_samples must be >= 1, got {n_dropout_samples}")
        self.dropout = nn.Dropout(dropout)
        self.n_dropout_samples = n_dropout_samples

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vectors (batch, in_dim) -> logits; averaged over dropout masks in training."""
        if self.training and self.n_dropout_samples > 1:
            return torch.stack([self.project(self.dropout(pooled)) for _ in range(self.n_dropout_samples)]).mean(0)
        return self.project(self.dropout(pooled))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """One pass of the head's layer(s) on already dropped-out vectors."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss against hard scores (batch,) or soft labels (batch, 6)."""
        raise NotImplementedError

    def kl_loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """KL(soft || predicted distribution) against soft labels (batch, 6)."""
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Continuous score on the 1-6 scale, (batch,)."""
        raise NotImplementedError

    def probs(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Probabilities of the scores 1..6, (batch, 6), or None for a head without them."""
        return None


def _check_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    batch = logits.shape[0]
    if target.shape not in ((batch,), (batch, N_SCORES)):
        raise ValueError(
            f"target must be hard scores of shape ({batch},) or soft labels of shape ({batch}, {N_SCORES}); "
            f"got {tuple(target.shape)}"
        )


def _check_soft(logits: torch.Tensor, soft: torch.Tensor) -> None:
    if soft.shape != (logits.shape[0], N_SCORES):
        raise ValueError(f"soft labels must have shape ({logits.shape[0]}, {N_SCORES}), got {tuple(soft.shape)}")


class RegressionHead(Head):
    """One output, the score; its bias starts at `initial_score` so training starts near the mean score."""

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1,
                 regression_loss: str = "mse", initial_score: float = INITIAL_SCORE):
        super().__init__(dropout, n_dropout_samples)
        if regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"unknown regression_loss {regression_loss!r}; choose one of {', '.join(REGRESSION_LOSSES)}")
        self.regression_loss = regression_loss
        self.fc = nn.Linear(in_dim, 1)
        nn.init.constant_(self.fc.bias, initial_score)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (batch, 1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(logits, target)
        pred, goal = self.predict(logits), expected_score(target)
        if self.regression_loss == "mse":
            return F.mse_loss(pred, goal)
        return F.smooth_l1_loss(pred, goal)

    def kl_loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """No distribution to compare: MSE between the prediction and the soft labels' expected score."""
        _check_soft(logits, soft)
        return F.mse_loss(self.predict(logits), expected_score(soft))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(torch.float32).squeeze(-1)


class ClassificationHead(Head):
    """Six logits, one per score 1..6."""

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1):
        super().__init__(dropout, n_dropout_samples)
        self.fc = nn.Linear(in_dim, N_SCORES)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (batch, 6)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(logits, target)
        if target.ndim == 2:
            return self.kl_loss(logits, target)
        return F.cross_entropy(logits.to(torch.float32), target.round().long() - 1)

    def kl_loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        _check_soft(logits, soft)
        return kl_divergence(soft, F.log_softmax(logits.to(torch.float32), dim=-1))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.to(torch.float32), dim=-1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probs(logits) @ _score_values(logits)


class OrdinalHead(Head):
    """CORAL: logits of P(score > k), k = 1..5, from one shared projection and five decreasing biases.

    The biases are b_1 = `bias_first` and b_{k+1} = b_k - softplus(`bias_gaps`[k-1]): strictly decreasing
    whatever the parameters, so P(score > k) decreases with k (rank consistency). They start at
    2, 1, 0, -1, -2, an expected score of 3.5 before training.
    """

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1):
        super().__init__(dropout, n_dropout_samples)
        self.fc = nn.Linear(in_dim, 1, bias=False)
        self.bias_first = nn.Parameter(torch.tensor(2.0))
        gap_of_one = torch.log(torch.expm1(torch.tensor(1.0)))  # softplus(gap_of_one) = 1
        self.bias_gaps = nn.Parameter(gap_of_one.repeat(N_SCORES - 2))

    def biases(self) -> torch.Tensor:
        """The five ordered biases b_1 > ... > b_5."""
        steps = torch.cumsum(F.softplus(self.bias_gaps), dim=0)
        return torch.cat([self.bias_first.view(1), self.bias_first - steps])

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled) + self.biases().to(pooled.dtype)  # (batch, 1) + (5,) -> (batch, 5)

    @staticmethod
    def cumulative_targets(target: torch.Tensor) -> torch.Tensor:
        """P(score > k), k = 1..5, (batch, 5): 0/1 for hard scores, from the distribution for soft labels."""
        target = target.to(torch.float32)
        if target.ndim == 2:
            return (1.0 - torch.cumsum(target, dim=-1)[:, : N_SCORES - 1]).clamp(0.0, 1.0)
        thresholds = torch.arange(1, N_SCORES, dtype=torch.float32, device=target.device)
        return (target.round().unsqueeze(-1) > thresholds).to(torch.float32)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(logits, target)
        return F.binary_cross_entropy_with_logits(logits.to(torch.float32), self.cumulative_targets(target))

    def kl_loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        _check_soft(logits, soft)
        return kl_divergence(soft, self.probs(logits).clamp(min=1e-8).log())

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """P(score = k) = P(score > k-1) - P(score > k), clipped at 0 and renormalised."""
        greater = torch.sigmoid(logits.to(torch.float32))
        ones, zeros = torch.ones_like(greater[:, :1]), torch.zeros_like(greater[:, :1])
        bounds = torch.cat([ones, greater, zeros], dim=-1)  # P(score > k) for k = 0..6
        p = (bounds[:, :-1] - bounds[:, 1:]).clamp(min=0.0)
        return p / p.sum(dim=-1, keepdim=True).clamp(min=1e-8)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return 1.0 + torch.sigmoid(logits.to(torch.float32)).sum(dim=-1)


def build_head(kind: str, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1,
               regression_loss: str = "mse") -> Head:
    """The head called `kind` (one of HEADS) on pooled vectors of size `in_dim`."""
    if kind == "regression":
        return RegressionHead(in_dim, dropout, n_dropout_samples, regression_loss)
    if kind == "classification":
        return ClassificationHead(in_dim, dropout, n_dropout_samples)
    if kind == "ordinal":
        return OrdinalHead(in_dim, dropout, n_dropout_samples)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
