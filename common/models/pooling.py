"""Poolings: token states of an essay -> one vector, every one of them blind to padding.

`hidden_states` is the backbone's tuple of layer outputs (embeddings first, last layer last), each
(batch, seq, hidden); `attention_mask` is (batch, seq) with 1 on real tokens. Padding never changes a
pooled vector, whatever side it is on: a test checks every pooling for it.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("cls", "mean", "max", "mean_max", "attention", "weighted_layer", "gem")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class Pooling(nn.Module):
    out_dim: int


class ClsPooling(Pooling):
    """State of the first real token ([CLS]), found through the mask so left padding works too."""

    def __init__(self, hidden: int):
        super().__init__()
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        first = attention_mask.argmax(dim=1)
        last = hidden_states[-1]
        return last[torch.arange(last.size(0), device=last.device), first]


class MeanPooling(Pooling):
    def __init__(self, hidden: int):
        super().__init__()
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        return _masked_mean(hidden_states[-1], attention_mask)


class MaxPooling(Pooling):
    def __init__(self, hidden: int):
        super().__init__()
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        x = hidden_states[-1].masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden_states[-1].dtype).min)
        return x.max(dim=1).values


class MeanMaxPooling(Pooling):
    def __init__(self, hidden: int):
        super().__init__()
        self.mean, self.max = MeanPooling(hidden), MaxPooling(hidden)
        self.out_dim = 2 * hidden

    def forward(self, hidden_states, attention_mask):
        return torch.cat([self.mean(hidden_states, attention_mask), self.max(hidden_states, attention_mask)], dim=-1)


class AttentionPooling(Pooling):
    """Learned token scores, softmax over the real tokens of each essay (along the sequence axis)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        x = hidden_states[-1]
        scores = self.score(x).squeeze(-1).float()  # (batch, seq)
        scores = scores.masked_fill(attention_mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=1).to(x.dtype)  # over the sequence of each essay
        return torch.einsum("bs,bsh->bh", weights, x)


class WeightedLayerPooling(Pooling):
    """Softmax-weighted mix of the last `n_layers` layers, then masked mean."""

    def __init__(self, hidden: int, n_layers: int):
        super().__init__()
        self.n_layers = n_layers
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        stacked = torch.stack(hidden_states[-self.n_layers :], dim=0)  # (layers, batch, seq, hidden)
        weights = torch.softmax(self.layer_logits, dim=0).to(stacked.dtype)
        mixed = torch.einsum("l,lbsh->bsh", weights, stacked)
        return _masked_mean(mixed, attention_mask)


class GeMPooling(Pooling):
    """Generalised mean (mean of x^p)^(1/p) over real tokens, learned p, on clamped positive states."""

    def __init__(self, hidden: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps
        self.out_dim = hidden

    def forward(self, hidden_states, attention_mask):
        x = hidden_states[-1].float().clamp(min=self.eps).pow(self.p)
        return _masked_mean(x, attention_mask).pow(1.0 / self.p).to(hidden_states[-1].dtype)


def build_pooling(name: str, hidden_size: int, num_hidden_layers: int) -> Pooling:
    """The pooling called `name` (one of POOLINGS)."""
    if name == "weighted_layer":
        return WeightedLayerPooling(hidden_size, num_hidden_layers)
    classes = {"cls": ClsPooling, "mean": MeanPooling, "max": MaxPooling, "mean_max": MeanMaxPooling,
               "attention": AttentionPooling, "gem": GeMPooling}
    if name not in classes:
        raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")
    return classes[name](hidden_size)
