"""Poolings: the token states of an essay -> one vector per essay, blind to padding.

Every pooling takes `hidden_states`, the backbone's tuple of layer outputs (embedding output first,
last layer last, as returned with `output_hidden_states=True`), each of shape (batch, seq, hidden), and
`attention_mask`, shape (batch, seq), 1 on real tokens and 0 on padding. It returns (batch, out_dim)
in the dtype of the hidden states; reductions run in fp32 so that fp16 activations neither overflow
in a sum over a long essay nor lose the p-th powers of GeM.

Padding is masked out everywhere, on either side: an essay's pooled vector is the same whether its
batch is padded to its own length or to a longer one.

- cls: state of the first real token (the [CLS] token when the tokenizer adds special tokens).
- mean / max / mean_max: masked mean, masked max, and both concatenated (out_dim = 2 x hidden).
- attention: a small MLP scores each token; a softmax over each essay's real tokens weights them.
- weighted_layer: a learned softmax mix of the last `num_hidden_layers` layers, then masked mean.
- gem: generalised mean (mean x^p)^(1/p) over real tokens with a learned p, on states clamped > 0.

A new pooling is a `Pooling` subclass under `@POOLINGS.register("name")`; one that needs the backbone's
depth overrides `for_backbone`.
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.parts.registry import Registry

POOLINGS: Registry[Pooling] = Registry("pooling")


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens in fp32: states (batch, seq, hidden), mask (batch, seq) -> (batch, hidden)."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    total = (states.to(torch.float32) * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1.0)


class Pooling(nn.Module):
    """Base class: `forward(hidden_states, attention_mask)` -> (batch, out_dim)."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim

    @classmethod
    def for_backbone(cls, hidden_size: int, num_hidden_layers: int) -> Pooling:
        """The pooling for a backbone of this hidden size and number of encoder layers."""
        return cls(hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@POOLINGS.register("cls")
class ClsPooling(Pooling):
    """State of the first real token, located through the mask so that left padding works too."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        last = hidden_states[-1]
        first_real = (attention_mask != 0).int().argmax(dim=1)  # argmax returns the first maximal index
        return last[torch.arange(last.size(0), device=last.device), first_real]


@POOLINGS.register("mean")
class MeanPooling(Pooling):
    """Mean of the last layer over real tokens."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        last = hidden_states[-1]
        return _masked_mean(last, attention_mask).to(last.dtype)


@POOLINGS.register("max")
class MaxPooling(Pooling):
    """Feature-wise maximum of the last layer over real tokens."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        last = hidden_states[-1]
        padding = (attention_mask == 0).unsqueeze(-1)
        return last.masked_fill(padding, torch.finfo(last.dtype).min).max(dim=1).values


@POOLINGS.register("mean_max")
class MeanMaxPooling(Pooling):
    """Masked mean and masked max of the last layer, concatenated: out_dim = 2 x hidden."""

    def __init__(self, hidden_size: int):
        super().__init__(2 * hidden_size)
        self.mean = MeanPooling(hidden_size)
        self.max = MaxPooling(hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(hidden_states, attention_mask), self.max(hidden_states, attention_mask)], dim=-1)


@POOLINGS.register("attention")
class AttentionPooling(Pooling):
    """Weighted sum of the last layer's tokens; weights = softmax over each essay's real tokens of learned scores.

    `score` maps every token state to one number, (batch, seq, 1). That is transposed to (batch, 1, seq)
    so the softmax runs along the sequence of each essay (a reshape would mix essays and tokens), and the
    weights multiply the states: (batch, 1, seq) @ (batch, seq, hidden) -> (batch, hidden).
    """

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        last = hidden_states[-1]
        scores = self.score(last).to(torch.float32).transpose(1, 2)  # (batch, 1, seq)
        scores = scores.masked_fill((attention_mask == 0).unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, last.to(torch.float32)).squeeze(1).to(last.dtype)


@POOLINGS.register("weighted_layer")
class WeightedLayerPooling(Pooling):
    """Softmax-weighted mix of the last `num_layers` layer outputs (equal weights at start), then masked mean."""

    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__(hidden_size)
        if num_layers < 1:
            raise ValueError(f"weighted_layer pooling needs num_hidden_layers >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))

    @classmethod
    def for_backbone(cls, hidden_size: int, num_hidden_layers: int) -> Pooling:
        return cls(hidden_size, num_hidden_layers)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        if len(hidden_states) < self.num_layers:
            raise ValueError(
                f"weighted_layer pooling mixes the last {self.num_layers} layers but got {len(hidden_states)} "
                "hidden states; run the backbone with output_hidden_states=True"
            )
        last = hidden_states[-1]
        stacked = torch.stack(hidden_states[-self.num_layers :], dim=0).to(torch.float32)  # (layers, b, s, h)
        weights = torch.softmax(self.layer_logits.to(torch.float32), dim=0)
        mixed = torch.einsum("l,lbsh->bsh", weights, stacked)
        return _masked_mean(mixed, attention_mask).to(last.dtype)


@POOLINGS.register("gem")
class GeMPooling(Pooling):
    """Generalised mean over real tokens, (mean_t x_t^p)^(1/p), with a learned exponent p (initially 3).

    p = 1 is the mean of the clamped states and p -> infinity tends to their max. States are clamped to
    at least `eps` first, so negative activations count as (almost) zero, as in the original GeM.
    """

    def __init__(self, hidden_size: int, p: float = 3.0, eps: float = 1e-6):
        super().__init__(hidden_size)
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        last = hidden_states[-1]
        p = self.p.to(torch.float32)
        powered = last.to(torch.float32).clamp(min=self.eps).pow(p)
        mean = _masked_mean(powered, attention_mask).clamp(min=torch.finfo(torch.float32).tiny)  # finite grad
        return mean.pow(1.0 / p).to(last.dtype)


def build_pooling(name: str, hidden_size: int, num_hidden_layers: int) -> Pooling:
    """The pooling registered as `name` for a backbone of this hidden size and depth."""
    POOLINGS.check(name)
    return POOLINGS[name].for_backbone(hidden_size, num_hidden_layers)
