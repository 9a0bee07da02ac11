"""Layer-wise LR groups on a tiny DeBERTa-v2, schedules, EMA and AWP."""

import copy
import itertools

import pytest
import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model

from common.train.optim import AWP, EMA, build_scheduler, param_groups

LR, HEAD_LR, WD, DECAY = 1e-4, 1e-3, 0.01, 0.5


class Scorer(nn.Module):
    """A tiny DeBERTa-v2 (relative attention: `encoder.rel_embeddings`, `encoder.LayerNorm`) + pooling + head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder_model = DebertaV2Model(DebertaV2Config(
            vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
            relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
            norm_rel_ebd="layer_norm", max_relative_positions=-1, position_buckets=16, type_vocab_size=0,
        ))
        self.layer_weights = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(16, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder_model(input_ids=input_ids, output_hidden_states=True).hidden_states
        pooled = sum(w * h.mean(1) for w, h in zip(self.layer_weights, hidden, strict=True))
        return self.head(pooled).squeeze(-1)


def groups_of(model: Scorer, **kwargs) -> list[dict]:
    backbone = model.encoder_model
    return param_groups(model, list(backbone.encoder.layer), backbone.embeddings, lr=LR, head_lr=HEAD_LR,
                        weight_decay=WD, layerwise_lr_decay=DECAY, **kwargs)


def expected(name: str, p: nn.Parameter) -> tuple[float, float]:
    """(lr, weight decay) a parameter should get, written out from the rules."""
    if name.startswith("encoder_model.embeddings."):
        lr = LR * DECAY**3
    elif name.startswith("encoder_model.encoder.layer."):
        lr = LR * DECAY ** (2 - int(name.split(".")[3]))
    elif name.startswith("encoder_model."):
        lr = LR  # rel_embeddings, encoder.LayerNorm: the top layer's rate
    else:
        lr = HEAD_LR
    no_decay = name.endswith("bias") or "LayerNorm" in name or p.ndim == 1
    return lr, 0.0 if no_decay else WD


def test_every_trainable_parameter_is_in_exactly_one_group_with_its_rate():
    model = Scorer()
    groups = groups_of(model)
    placed = [id(p) for g in groups for p in g["params"]]
    params = dict(model.named_parameters())
    assert len(placed) == len(set(placed)) == len(params)
    group_of = {id(p): g for g in groups for p in g["params"]}
    for name, p in params.items():
        g = group_of[id(p)]
        assert (g["lr"], g["weight_decay"]) == pytest.approx(expected(name, p)), name
    rel = group_of[id(params["encoder_model.encoder.rel_embeddings.weight"])]
    assert (rel["name"], rel["lr"], rel["weight_decay"]) == ("backbone_other", LR, WD)
    norm = group_of[id(params["encoder_model.encoder.LayerNorm.weight"])]
    assert (norm["name"], norm["lr"], norm["weight_decay"]) == ("backbone_other_no_decay", LR, 0.0)
    emb_norm = group_of[id(params["encoder_model.embeddings.LayerNorm.weight"])]
    assert emb_norm["weight_decay"] == 0.0 and emb_norm["lr"] == pytest.approx(LR / 8)
    assert group_of[id(model.layer_weights)]["lr"] == HEAD_LR
    assert [g["name"] for g in groups] == [
        "embeddings", "embeddings_no_decay", "layer_0", "layer_0_no_decay", "layer_1", "layer_1_no_decay",
        "layer_2", "layer_2_no_decay", "backbone_other", "backbone_other_no_decay", "head", "head_no_decay",
    ]
    assert all({"params", "lr", "weight_decay", "name"} <= set(g) for g in groups)
    torch.optim.AdamW(groups, lr=LR)  # accepted as is


def test_frozen_parameters_are_left_out():
    model = Scorer()
    model.encoder_model.embeddings.requires_grad_(False)
    groups = groups_of(model)
    placed = {id(p) for g in groups for p in g["params"]}
    assert placed == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.encoder_model.embeddings.word_embeddings.weight) not in placed
    assert "embeddings" not in [g["name"] for g in groups]


def test_no_decay_means_one_rate_and_a_foreign_module_is_an_error():
    model = Scorer()
    backbone = model.encoder_model
    groups = param_groups(model, list(backbone.encoder.layer), backbone.embeddings, LR, HEAD_LR, WD)
    assert {g["lr"] for g in groups if not g["name"].startswith("head")} == {LR}
    with pytest.raises(ValueError, match="not a submodule"):
        param_groups(model, list(backbone.encoder.layer), nn.Linear(2, 2), LR, HEAD_LR, WD)


def lrs(kind: str, steps: int = 10, warmup_ratio: float = 0.2) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, kind, num_training_steps=steps, warmup_ratio=warmup_ratio)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedules_warm_up_then_follow_their_shape():
    linear, cosine, constant = lrs("linear"), lrs("cosine"), lrs("constant")
    for curve in (linear, cosine, constant):
        assert curve[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert linear[2:] == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert all(a > b for a, b in itertools.pairwise(cosine[2:])) and cosine[-1] < 0.05
    assert cosine[6] == pytest.approx(0.5)  # half way through the decay
    assert constant[2:] == pytest.approx([1.0] * 8)
    assert lrs("linear", warmup_ratio=0.0)[0] == 1.0
    with pytest.raises(ValueError, match="not one of"):
        lrs("step")


def test_ema_math_swap_and_resume():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    model.bias.requires_grad_(False)
    ema = EMA(model, decay=0.5)
    assert set(ema.shadow) == {"weight"}  # trainable weights only
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 5
    with ema.apply_to(model):
        assert torch.equal(model.weight, torch.full((1, 2), 3.5))
    assert torch.equal(model.weight, torch.full((1, 2), 5.0))
    with pytest.raises(RuntimeError, match="boom"), ema.apply_to(model):
        raise RuntimeError("boom")
    assert torch.equal(model.weight, torch.full((1, 2), 5.0))  # restored on error too
    resumed = EMA(model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.decay == 0.5 and torch.equal(resumed.shadow["weight"], torch.full((1, 2), 3.5))
    with pytest.raises(KeyError):
        EMA(nn.Linear(2, 1), 0.5).load_state_dict(ema.state_dict())


def test_awp_perturbs_within_bounds_restores_exactly_and_gradients_accumulate():
    model = Scorer().eval()  # no dropout: both passes are deterministic, so the gradients can be compared
    ids = torch.randint(5, 100, (4, 12))
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def loss_of(m: nn.Module) -> torch.Tensor:
        return ((m(ids) - target) ** 2).mean()

    loss_of(model).backward()
    clean_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(model, adv_lr=1.0, adv_eps=0.01)
    awp.perturb()
    perturbed = {n: p.detach().clone() for n, p in model.named_parameters()}
    tables = {"encoder_model.embeddings.word_embeddings.weight", "encoder_model.encoder.rel_embeddings.weight"}
    for n, p in model.named_parameters():
        moved = (p - before[n]).abs()
        if p.ndim >= 2 and n not in tables:
            assert moved.max() > 0, n
            assert (moved <= 0.01 * before[n].abs() * (1 + 1e-4)).all(), n  # relative bound, float rounding
            uphill = (p - before[n]) * clean_grads[n]
            assert (uphill >= 0).all() and uphill.sum() > 0, n  # along the gradient
        else:
            assert torch.equal(p, before[n]), n  # biases, norms, layer weights, embedding tables untouched
    with pytest.raises(RuntimeError, match="twice"):
        awp.perturb()

    loss_of(model).backward()
    awp.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n

    reference = copy.deepcopy(model)
    reference.zero_grad()
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(perturbed[n])
    loss_of(reference).backward()
    adv_grads = dict(reference.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, clean_grads[n] + adv_grads[n].grad)


def test_awp_without_gradients_and_bad_settings():
    model = nn.Linear(3, 1)
    awp = AWP(model, adv_lr=0.1, adv_eps=0.01)
    awp.perturb()  # no gradients yet: nothing to perturb
    assert awp.backup == {}
    with pytest.raises(ValueError):
        AWP(model, adv_lr=0.0, adv_eps=0.01)
