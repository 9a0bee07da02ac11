"""Optimiser parts: layer-wise LR decay groups, schedules with warmup, an EMA of the weights, AWP.

- `param_groups` puts every trainable parameter in exactly one AdamW group. With n encoder layers,
  layer i (0 at the bottom) gets lr * decay^(n-1-i), so the top layer gets lr and the embeddings
  lr * decay^n. The backbone is the smallest module holding the encoder layers and the embeddings; its
  other parameters (DeBERTa's `encoder.rel_embeddings` and `encoder.LayerNorm`, a pooler) get the top
  layer's rate, and every parameter outside it (pooling, head) `head_lr`. Biases, normalisation
  weights and every other 1-D tensor get no weight decay.
- `named_rate_group`: the group whose rate is `lr` (the top encoder layer's), the rate the logs show.
- `build_scheduler`: linear, cosine or constant after a linear warmup.
- `EMA`: shadow = decay * shadow + (1 - decay) * weights after each optimizer step; `apply_to` swaps
  the shadow in for evaluation.
- `AWP`: adversarial weight perturbation (Wu et al. 2020, as Kaggle NLP solutions use it) between the
  clean and the adversarial backward pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

log = logging.getLogger(__name__)

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
"""Our schedule names -> transformers' scheduler names (each has a linear warmup)."""


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation weights (every 1-D tensor) are not decayed."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered


def _backbone_prefix(model: nn.Module, modules: list[nn.Module]) -> str:
    """Qualified name of the smallest submodule of `model` holding all `modules` ("" for the model)."""
    names = {id(m): name for name, m in model.named_modules()}
    paths = []
    for m in modules:
        if id(m) not in names:
            raise ValueError(f"{type(m).__name__} passed to param_groups is not a submodule of {type(model).__name__}")
        paths.append(names[id(m)].split(".") if names[id(m)] else [])
    common: list[str] = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def param_groups(
    model: nn.Module,
    encoder_layers: list[nn.Module],
    embeddings: nn.Module,
    lr: float,
    head_lr: float,
    weight_decay: float,
    layerwise_lr_decay: float = 1.0,
) -> list[dict]:
    """AdamW parameter groups with layer-wise LR decay; trainable parameters only, each in one group.

    Args:
        model: the whole model (backbone, pooling, head).
        encoder_layers: the backbone's transformer layers, bottom first (`model.encoder.layer`).
        embeddings: the backbone's embedding module.
        lr: the top encoder layer's learning rate (and the other backbone parameters').
        head_lr: learning rate of everything outside the backbone (pooling, head).
        weight_decay: decay of matrices; biases and normalisation weights get 0.
        layerwise_lr_decay: factor per layer going down (1.0: one rate for the whole backbone).

    Returns:
        Dicts with "params", "lr", "weight_decay" and "name" (e.g. "layer_11", "layer_11_no_decay",
        "embeddings", "backbone_other", "head"), embeddings first, then layers bottom up; empty groups
        are left out.
    """
    if not 0 < layerwise_lr_decay <= 1:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}")
    n = len(encoder_layers)
    owner: dict[int, tuple[str, float]] = {}
    for p in embeddings.parameters():
        owner[id(p)] = ("embeddings", lr * layerwise_lr_decay**n)
    for i, layer in enumerate(encoder_layers):
        for p in layer.parameters():
            owner[id(p)] = (f"layer_{i}", lr * layerwise_lr_decay ** (n - 1 - i))
    prefix = _backbone_prefix(model, [*encoder_layers, embeddings])
    order = ["embeddings", *(f"layer_{i}" for i in range(n)), "backbone_other", "head"]
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owner:
            label, group_lr = owner[id(p)]
        elif not prefix or name.startswith(prefix + "."):
            label, group_lr = "backbone_other", lr
        else:
            label, group_lr = "head", head_lr
        no_decay = _no_decay(name, p)
        key = (label, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": group_lr, "weight_decay": 0.0 if no_decay else weight_decay,
                           "name": label + ("_no_decay" if no_decay else "")}
        groups[key]["params"].append(p)
    result = [groups[key] for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1]))]
    for g in result:
        log.debug("param group %-22s %9d weights  lr %.3g  weight decay %g", g["name"],
                  sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"])
    log.info("%d parameter groups, %d trainable weights (backbone %r, %d encoder layers)", len(result),
             sum(p.numel() for g in result for p in g["params"]), prefix, n)
    return result


def named_rate_group(groups: list[dict]) -> int:
    """Index of the group whose rate is the `lr` that params name: the top encoder layer's (`param_groups`
    order: embeddings, layers bottom up, backbone_other, head). Without a trainable encoder layer, the other
    backbone parameters' (also `lr`), else the first group."""
    names = [g.get("name", "") for g in groups]
    layers = [i for i, n in enumerate(names) if n.startswith("layer_")]
    if layers:
        top = max(int(names[i].split("_")[1]) for i in layers)
        return next(i for i in layers if names[i].split("_")[1] == str(top))
    return next((i for i, n in enumerate(names) if n.startswith("backbone_other")), 0)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, num_training_steps: int,
                    warmup_ratio: float) -> LRScheduler:
    """`kind` ("linear", "cosine", "constant") after a linear warmup over `warmup_ratio` of the steps.

    Call `scheduler.step()` once per optimizer step; linear and cosine reach 0 at num_training_steps.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"scheduler {kind!r} is not one of {sorted(SCHEDULES)}")
    if num_training_steps < 1 or not 0 <= warmup_ratio < 1:
        raise ValueError(f"need num_training_steps >= 1 and 0 <= warmup_ratio < 1, got {num_training_steps}, "
                         f"{warmup_ratio}")
    return get_scheduler(SCHEDULES[kind], optimizer, num_warmup_steps=round(warmup_ratio * num_training_steps),
                         num_training_steps=num_training_steps)


class EMA:
    """Exponential moving average of a model's trainable weights, kept in float32 beside the model.

    `update(model)` after each optimizer step: shadow = decay * shadow + (1 - decay) * weight.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def _pairs(self, model: nn.Module) -> Iterator[tuple[torch.Tensor, nn.Parameter]]:
        params = dict(model.named_parameters())
        missing = self.shadow.keys() - params.keys()
        if missing:
            raise KeyError(f"the model lacks {len(missing)} weights the EMA tracks, e.g. {sorted(missing)[:3]}")
        for n, shadow in self.shadow.items():
            yield shadow, params[n]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, p in self._pairs(model):
            shadow.lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block the model holds the EMA weights; its own come back on exit (even on error)."""
        pairs = list(self._pairs(model))
        with torch.no_grad():
            backup = [p.detach().clone() for _, p in pairs]
            for shadow, p in pairs:
                p.copy_(shadow)
        try:
            yield model
        finally:
            with torch.no_grad():
                for (_, p), saved in zip(pairs, backup, strict=True):
                    p.copy_(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.detach().cpu().clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["shadow"].keys() != self.shadow.keys():
            raise KeyError("EMA state tracks other weights than this EMA: was it saved for another model?")
        self.decay = state["decay"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


class AWP:
    """Adversarial weight perturbation, between the clean and the adversarial backward pass.

    The engine calls `loss.backward(); awp.perturb(); adv_loss.backward(); awp.restore()` on the steps
    from `awp_start_epoch` on (it counts them itself). `perturb` moves each target weight w along its gradient g,
    w += adv_lr * ||w|| * g / ||g||, then clips every element to within adv_eps * |w| of its value
    (a weight's relative change is at most adv_eps), so the gradient of `adv_loss`, added to the clean
    one, points towards flatter minima. Only the direction of g is used: fp16 loss scaling and
    gradient accumulation do not change the perturbation.

    Targets: every trainable matrix (ndim >= 2) with a gradient, except embedding tables (nn.Embedding,
    including DeBERTa's relative-position table). Biases and normalisation weights are 1-D and left
    alone; embedding tables are huge and their gradient touches only the rows of the batch's tokens.
    `restore` copies the saved weights back bit for bit; the gradients of both passes stay summed.
    """

    def __init__(self, model: nn.Module, adv_lr: float, adv_eps: float):
        if adv_lr <= 0 or adv_eps <= 0:
            raise ValueError(f"AWP needs adv_lr > 0 and adv_eps > 0, got {adv_lr}, {adv_eps}")
        self.model = model
        self.adv_lr = adv_lr
        self.adv_eps = adv_eps
        self.backup: dict[str, torch.Tensor] = {}

    def _targets(self) -> Iterator[tuple[str, nn.Parameter]]:
        embedding_tables = {id(m.weight) for m in self.model.modules() if isinstance(m, nn.Embedding)}
        for name, p in self.model.named_parameters():
            if p.requires_grad and p.grad is not None and p.ndim >= 2 and id(p) not in embedding_tables:
                yield name, p

    @torch.no_grad()
    def perturb(self) -> None:
        """Save the target weights and push them up the gradient, each element within adv_eps * |w|."""
        if self.backup:
            raise RuntimeError("AWP.perturb called twice without restore()")
        for name, p in self._targets():
            grad_norm = torch.linalg.vector_norm(p.grad)
            if not torch.isfinite(grad_norm) or grad_norm == 0:
                continue
            original = p.detach().clone()
            self.backup[name] = original
            step = p.grad * (self.adv_lr * torch.linalg.vector_norm(original) / grad_norm)
            bound = self.adv_eps * original.abs()
            p.add_(step.to(p.dtype))
            p.copy_(torch.minimum(torch.maximum(p, original - bound), original + bound))

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by `perturb` (exactly); the gradients are left as they are."""
        params = dict(self.model.named_parameters())
        for name, original in self.backup.items():
            params[name].copy_(original)
        self.backup = {}
