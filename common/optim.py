"""Optimiser parts: layer-wise LR decay groups, schedules with warmup, EMA of weights, AWP.

`param_groups` puts every trainable parameter in exactly one AdamW group: encoder layer i (of n, top
layer n-1) gets lr * decay^(n-1-i), the embeddings lr * decay^n, pooling and head `head_lr`, and any
other backbone parameter (DeBERTa's `encoder.rel_embeddings` and `encoder.LayerNorm`, which sit outside
the layer list) the top-layer rate. Biases, normalisation weights and every 1-D tensor get no decay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import get_scheduler


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(model: nn.Module, encoder_layers: list[nn.Module], embeddings: nn.Module, lr: float,
                 head_lr: float, weight_decay: float, layerwise_lr_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups; trainable parameters only, each in exactly one group."""
    owner: dict[int, tuple[str, float]] = {}
    n = len(encoder_layers)
    for p in embeddings.parameters():
        owner[id(p)] = ("embeddings", lr * layerwise_lr_decay**n)
    for i, layer in enumerate(encoder_layers):
        for p in layer.parameters():
            owner[id(p)] = (f"layer_{i}", lr * layerwise_lr_decay ** (n - 1 - i))
    backbone_ids = {id(p) for name, p in model.named_parameters() if name.startswith("backbone.")}
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owner:
            label, group_lr = owner[id(p)]
        elif id(p) in backbone_ids:
            label, group_lr = "backbone_other", lr
        else:
            label, group_lr = "head", head_lr
        decay = not _no_decay(name, p)
        key = (label, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": group_lr, "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{label}{'' if decay else '_no_decay'}"}
        groups[key]["params"].append(p)
    return list(groups.values())


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, num_training_steps: int, warmup_ratio: float):
    """Linear / cosine / constant schedule after `warmup_ratio` of the steps of linear warmup."""
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(name, optimizer, num_warmup_steps=int(warmup_ratio * num_training_steps),
                         num_training_steps=num_training_steps)


class EMA:
    """Exponential moving average of the trainable weights: shadow = decay * shadow + (1 - decay) * w."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[None]:
        """Swap the EMA weights in for the duration of the block, then restore the trained ones."""
        backup = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self.shadow:
                    backup[n] = p.detach().clone()
                    p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in backup:
                        p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


class AWP:
    """Adversarial weight perturbation: after backward, push weights along their gradient, bounded.

    Each perturbed weight w moves by adv_lr * |w| * g / |g| and is clipped to within adv_eps * |w| of
    its original value; `restore` puts the originals back exactly. Only matrices (ndim >= 2) outside
    the embeddings are perturbed: biases and norms are left alone.
    """

    def __init__(self, model: nn.Module, adv_lr: float, adv_eps: float):
        self.model, self.adv_lr, self.adv_eps = model, adv_lr, adv_eps
        self.backup: dict[str, torch.Tensor] = {}

    def _targets(self) -> Iterator[tuple[str, nn.Parameter]]:
        for n, p in self.model.named_parameters():
            if p.requires_grad and p.grad is not None and p.ndim >= 2 and "embeddings" not in n:
                yield n, p

    @torch.no_grad()
    def perturb(self) -> None:
        for n, p in self._targets():
            grad_norm, weight_norm = torch.norm(p.grad), torch.norm(p.detach())
            if grad_norm == 0 or not torch.isfinite(grad_norm):
                continue
            self.backup[n] = p.detach().clone()
            step = self.adv_lr * weight_norm * p.grad / grad_norm
            bound = self.adv_eps * p.detach().abs()
            p.add_(step)
            p.copy_(torch.max(torch.min(p, self.backup[n] + bound), self.backup[n] - bound))

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.model.named_parameters():
            if n in self.backup:
                p.copy_(self.backup[n])
        self.backup = {}
