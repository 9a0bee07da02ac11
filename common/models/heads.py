"""Prediction heads on the pooled vector: regression, 6-way classification, ordinal (CORAL).

Every head maps logits to a continuous score on the 1-6 scale (`predict`), to class probabilities
where it has them (`probs`), and has a `loss` for hard scores (batch,) or soft labels (batch, 6).

- regression: one output; MSE or SmoothL1 against the score (soft labels: their expected score).
- classification: 6 logits; cross-entropy (soft labels: KL divergence); prediction = expected score.
- ordinal (CORAL, rank-consistent): one shared projection and 5 ordered biases give logits of
  P(score > k), k = 1..5; loss = binary cross-entropy on those events; prediction = 1 + sum P(score > k).
Multi-sample dropout: in training the head runs on `n_dropout_samples` dropout masks and averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("regression", "classification", "ordinal")
N_CLASSES = 6
_SCORES = torch.arange(1, N_CLASSES + 1, dtype=torch.float32)


def kl_divergence(p_target: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p || q) = sum p (log p - log q), with 0 log 0 = 0."""
    safe = torch.where(p_target > 0, p_target, torch.ones_like(p_target))
    return (p_target * (safe.log() - log_q)).sum(dim=-1).mean()


def _expected(target: torch.Tensor) -> torch.Tensor:
    return target if target.ndim == 1 else target @ _SCORES.to(target.device)


class Head(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float, n_dropout_samples: int):
        super().__init__()
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(max(1, n_dropout_samples)))
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.training or len(self.dropouts) == 1:
            return self.fc(self.dropouts[0](pooled))
        return torch.stack([self.fc(d(pooled)) for d in self.dropouts]).mean(0)

    def probs(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None


class RegressionHead(Head):
    def __init__(self, in_dim, dropout=0.1, n_dropout_samples=1, regression_loss="mse", init_score=3.0):
        super().__init__(in_dim, 1, dropout, n_dropout_samples)
        if regression_loss not in ("mse", "smooth_l1"):
            raise ValueError(f"regression_loss must be 'mse' or 'smooth_l1', got {regression_loss!r}")
        self.regression_loss = regression_loss
        nn.init.constant_(self.fc.bias, init_score)

    def loss(self, logits, target):
        pred, goal = logits.squeeze(-1), _expected(target)
        return F.mse_loss(pred, goal) if self.regression_loss == "mse" else F.smooth_l1_loss(pred, goal)

    def kl_loss(self, logits, soft):
        return F.mse_loss(logits.squeeze(-1), _expected(soft))

    def predict(self, logits):
        return logits.squeeze(-1)


class ClassificationHead(Head):
    def __init__(self, in_dim, dropout=0.1, n_dropout_samples=1):
        super().__init__(in_dim, N_CLASSES, dropout, n_dropout_samples)

    def loss(self, logits, target):
        if target.ndim == 2:
            return self.kl_loss(logits, target)
        return F.cross_entropy(logits, target.round().long() - 1)

    def kl_loss(self, logits, soft):
        return kl_divergence(soft, F.log_softmax(logits, dim=-1))

    def probs(self, logits):
        return torch.softmax(logits, dim=-1)

    def predict(self, logits):
        return self.probs(logits) @ _SCORES.to(logits.device)


class OrdinalHead(Head):
    """CORAL: logits_k = w.x + b_k for the events score > k (k = 1..5), biases kept decreasing."""

    def __init__(self, in_dim, dropout=0.1, n_dropout_samples=1):
        super().__init__(in_dim, 1, dropout, n_dropout_samples)
        nn.init.zeros_(self.fc.bias)
        self.first_bias = nn.Parameter(torch.tensor(2.0))
        self.gaps = nn.Parameter(torch.ones(N_CLASSES - 2))

    def forward(self, pooled):
        biases = torch.cat([self.first_bias.view(1), self.first_bias - torch.cumsum(F.softplus(self.gaps), 0)])
        return super().forward(pooled) + biases  # (batch, 5)

    def _cumulative_targets(self, target):
        if target.ndim == 2:  # P(score > k) from the distribution
            return 1.0 - torch.cumsum(target, dim=-1)[:, : N_CLASSES - 1]
        ks = torch.arange(1, N_CLASSES, device=target.device, dtype=target.dtype)
        return (target.unsqueeze(-1) > ks).to(target.dtype)

    def loss(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, self._cumulative_targets(target).clamp(0, 1))

    def kl_loss(self, logits, soft):
        return kl_divergence(soft, self.probs(logits).clamp(min=1e-8).log())

    def probs(self, logits):
        greater = torch.sigmoid(logits)  # P(score > k), k = 1..5
        ones, zeros = torch.ones_like(greater[:, :1]), torch.zeros_like(greater[:, :1])
        bounds = torch.cat([ones, greater, zeros], dim=-1)
        p = (bounds[:, :-1] - bounds[:, 1:]).clamp(min=0)
        return p / p.sum(dim=-1, keepdim=True).clamp(min=1e-8)

    def predict(self, logits):
        return 1.0 + torch.sigmoid(logits).sum(dim=-1)


def build_head(kind: str, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1,
               regression_loss: str = "mse") -> Head:
    """The head called `kind` (one of HEADS)."""
    if kind == "regression":
        return RegressionHead(in_dim, dropout, n_dropout_samples, regression_loss)
    if kind == "classification":
        return ClassificationHead(in_dim, dropout, n_dropout_samples)
    if kind == "ordinal":
        return OrdinalHead(in_dim, dropout, n_dropout_samples)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
