"""Prediction heads on the pooled essay vector: regression, 6-way classification, ordinal (CORAL).

Every head turns the pooled vector, (batch, in_dim), into logits, and the logits into
- `predict(logits)`: a continuous score on the 1-6 scale, (batch,);
- `probs(logits)`: class probabilities over the scores 1..6, (batch, 6), or None (`gives_probs` False).
The training loss is not the head's: it is a loss of common/models/parts/losses.py, called with the head, its
logits and the targets; `default_loss` names the one a head trains with unless the params choose another.

The kinds:
- regression: 1 logit, the score itself (bias starts at 3.0, near the mean score). Default loss: MSE.
- classification: 6 logits, one per score. Prediction: expected score under softmax. Default loss:
  cross-entropy (KL divergence for soft labels).
- ordinal: CORAL (Cao, Mirjalili & Raschka 2020), 5 cumulative logits, logit_k = w.x + b_k for the
  events "score > k", k = 1..5, with one weight vector w shared by all five and biases constrained to
  b_1 > b_2 > ... > b_5. The constraint makes P(score > k) decrease with k for every essay, so the
  predictions are rank-consistent by construction (plain CORAL gets this only at its optimum).
  Prediction: 1 + sum_k P(score > k), the expected score. Default loss: binary cross-entropy on the
  5 events.

A new head is a `Head` subclass under `@HEADS.register("name")`, built as `cls(in_dim, dropout,
n_dropout_samples)`.

Multi-sample dropout: with `n_dropout_samples` > 1 the head averages its logits over that many dropout
masks in training; in eval mode dropout is off and the head runs once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.models.parts.registry import Registry

HEADS: Registry[Head] = Registry("head")
N_SCORES = 6
INITIAL_SCORE = 3.0


def score_values(like: torch.Tensor) -> torch.Tensor:
    """The scores 1..6 as a float32 vector on `like`'s device."""
    return torch.arange(1, N_SCORES + 1, dtype=torch.float32, device=like.device)


class Head(nn.Module):
    """Base head: dropout (multi-sample in training) before a kind-specific map to logits.

    `default_loss`: the loss (a name in LOSSES) the head trains with when the params leave `loss` empty.
    `gives_probs`: whether `probs` returns class probabilities (else None).
    """

    default_loss = "mse"
    gives_probs = False

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

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Continuous score on the 1-6 scale, (batch,)."""
        raise NotImplementedError

    def probs(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Probabilities of the scores 1..6, (batch, 6), or None for a head without them."""
        return None


@HEADS.register("regression")
class RegressionHead(Head):
    """One output, the score; its bias starts at `initial_score` so training starts near the mean score."""

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1,
                 initial_score: float = INITIAL_SCORE):
        super().__init__(dropout, n_dropout_samples)
        self.fc = nn.Linear(in_dim, 1)
        nn.init.constant_(self.fc.bias, initial_score)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (batch, 1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(torch.float32).squeeze(-1)


@HEADS.register("classification")
class ClassificationHead(Head):
    """Six logits, one per score 1..6."""

    default_loss = "cross_entropy"
    gives_probs = True

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1):
        super().__init__(dropout, n_dropout_samples)
        self.fc = nn.Linear(in_dim, N_SCORES)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (batch, 6)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.to(torch.float32), dim=-1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probs(logits) @ score_values(logits)


@HEADS.register("ordinal")
class OrdinalHead(Head):
    """CORAL: logits of P(score > k), k = 1..5, from one shared projection and five decreasing biases.

    The biases are b_1 = `bias_first` and b_{k+1} = b_k - softplus(`bias_gaps`[k-1]): strictly decreasing
    whatever the parameters, so P(score > k) decreases with k (rank consistency). They start at
    2, 1, 0, -1, -2, an expected score of 3.5 before training.
    """

    default_loss = "cumulative_bce"
    gives_probs = True

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

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """P(score = k) = P(score > k-1) - P(score > k), clipped at 0 and renormalised."""
        greater = torch.sigmoid(logits.to(torch.float32))
        ones, zeros = torch.ones_like(greater[:, :1]), torch.zeros_like(greater[:, :1])
        bounds = torch.cat([ones, greater, zeros], dim=-1)  # P(score > k) for k = 0..6
        p = (bounds[:, :-1] - bounds[:, 1:]).clamp(min=0.0)
        return p / p.sum(dim=-1, keepdim=True).clamp(min=1e-8)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return 1.0 + torch.sigmoid(logits.to(torch.float32)).sum(dim=-1)


@HEADS.register("hybrid")
class HybridHead(Head):
    """A regression output and, beside it, six class logits (an auxiliary classification head on the same
    pooled vector): logits (batch, 7) = [score, class logits 1..6]. The score is the prediction; the class
    probabilities are reported (and stacked) too. Trained with the `hybrid` loss: both at once."""

    default_loss = "hybrid"
    gives_probs = True

    def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1,
                 initial_score: float = INITIAL_SCORE):
        super().__init__(dropout, n_dropout_samples)
        self.fc = nn.Linear(in_dim, 1 + N_SCORES)
        with torch.no_grad():
            self.fc.bias.zero_()
            self.fc.bias[0] = initial_score

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)  # (batch, 7)

    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 1:]

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.class_logits(logits).to(torch.float32), dim=-1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0].to(torch.float32)
