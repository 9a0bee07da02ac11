"""Tests of common/models/parts/pooling.py: shapes, padding blindness on both sides, and what each pooling computes."""

from __future__ import annotations

import pytest
import torch

from common.models.parts.pooling import POOLINGS, build_pooling

HIDDEN = 16
N_LAYERS = 3  # hidden_states holds the embedding output plus N_LAYERS layers


def layer_states(batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, seq, HIDDEN, generator=g) for _ in range(N_LAYERS + 1))


def pad(states: tuple[torch.Tensor, ...], n: int, side: str, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Add `n` positions of large garbage on one side of every layer (what a backbone may leave on padding)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in states:
        junk = 100.0 * torch.randn(s.shape[0], n, s.shape[2], generator=g)
        out.append(torch.cat([s, junk], dim=1) if side == "right" else torch.cat([junk, s], dim=1))
    return tuple(out)


def pad_mask(length: int, total: int, side: str) -> torch.Tensor:
    real, padding = torch.ones(length, dtype=torch.long), torch.zeros(total - length, dtype=torch.long)
    return torch.cat([real, padding]) if side == "right" else torch.cat([padding, real])


@pytest.mark.parametrize("name", POOLINGS)
def test_output_shape_and_out_dim(name: str) -> None:
    pooling = build_pooling(name, HIDDEN, N_LAYERS)
    out = pooling(layer_states(3, 7), torch.ones(3, 7, dtype=torch.long))
    assert out.shape == (3, pooling.out_dim)
    assert pooling.out_dim == (2 * HIDDEN if name == "mean_max" else HIDDEN)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", POOLINGS)
def test_padding_never_changes_an_essays_vector(name: str, side: str) -> None:
    """Two essays (5 and 8 tokens) pooled alone equal the same essays in a batch padded to 11 tokens."""
    torch.manual_seed(0)
    pooling = build_pooling(name, HIDDEN, N_LAYERS).eval()
    short, long = layer_states(1, 5, seed=2), layer_states(1, 8, seed=3)
    alone = [pooling(short, torch.ones(1, 5, dtype=torch.long)), pooling(long, torch.ones(1, 8, dtype=torch.long))]
    batch = tuple(torch.cat([a, b]) for a, b in zip(pad(short, 6, side), pad(long, 3, side), strict=True))
    mask = torch.stack([pad_mask(5, 11, side), pad_mask(8, 11, side)])
    in_batch = pooling(batch, mask)
    torch.testing.assert_close(in_batch[0:1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(in_batch[1:2], alone[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", POOLINGS)
def test_reduced_precision_states_keep_their_dtype(name: str) -> None:
    pooling = build_pooling(name, HIDDEN, N_LAYERS).to(torch.bfloat16)
    states = tuple(s.to(torch.bfloat16) for s in layer_states(2, 6))
    out = pooling(states, torch.ones(2, 6, dtype=torch.long))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_cls_takes_the_first_real_token_on_either_side() -> None:
    pooling = build_pooling("cls", HIDDEN, N_LAYERS)
    states = layer_states(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    out = pooling(states, mask)
    torch.testing.assert_close(out[0], states[-1][0, 0])
    torch.testing.assert_close(out[1], states[-1][1, 2])


def test_mean_and_max_cover_the_real_tokens_of_the_last_layer() -> None:
    states = layer_states(1, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    real = states[-1][0, :4]
    torch.testing.assert_close(build_pooling("mean", HIDDEN, N_LAYERS)(states, mask)[0], real.mean(0))
    torch.testing.assert_close(build_pooling("max", HIDDEN, N_LAYERS)(states, mask)[0], real.max(0).values)
    both = build_pooling("mean_max", HIDDEN, N_LAYERS)(states, mask)[0]
    torch.testing.assert_close(both, torch.cat([real.mean(0), real.max(0).values]))


def test_attention_weights_are_a_softmax_over_each_essays_own_tokens() -> None:
    torch.manual_seed(0)
    pooling = build_pooling("attention", HIDDEN, N_LAYERS)
    with torch.no_grad():  # sharp, unequal token scores, so a wrong axis would show
        pooling.score[-1].weight.mul_(20.0)
    states = layer_states(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = pooling(states, mask)
    for i, n in enumerate([3, 6]):
        tokens = states[-1][i, :n]
        weights = torch.softmax(pooling.score(tokens).squeeze(-1), dim=0)
        torch.testing.assert_close(out[i], weights @ tokens)


def test_weighted_layer_mixes_only_the_last_layers_and_learns_the_mix() -> None:
    pooling = build_pooling("weighted_layer", HIDDEN, N_LAYERS)
    states = layer_states(2, 5)
    mask = torch.ones(2, 5, dtype=torch.long)
    out = pooling(states, mask)
    torch.testing.assert_close(out, torch.stack(states[1:]).mean(0).mean(1))  # equal weights at start
    changed_embeddings = (states[0] + 1000.0, *states[1:])
    torch.testing.assert_close(pooling(changed_embeddings, mask), out)
    out.sum().backward()
    assert pooling.layer_logits.grad is not None and pooling.layer_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="output_hidden_states"):
        pooling(states[-2:], mask)


def test_gem_runs_from_mean_to_max_with_its_learned_p() -> None:
    pooling = build_pooling("gem", HIDDEN, N_LAYERS)
    states = tuple(s.abs() + 0.1 for s in layer_states(1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    real = states[-1][0, :5]
    with torch.no_grad():
        pooling.p.fill_(1.0)
    torch.testing.assert_close(pooling(states, mask)[0], real.mean(0))
    with torch.no_grad():
        pooling.p.fill_(60.0)
    torch.testing.assert_close(pooling(states, mask)[0], real.max(0).values, rtol=0.05, atol=0.0)
    with torch.no_grad():
        pooling.p.fill_(3.0)
    pooling(states, mask).sum().backward()
    assert pooling.p.grad is not None and pooling.p.grad != 0


def test_unknown_pooling_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'median'; choose one of cls, mean, max, mean_max, attention, "
                                         "weighted_layer, gem"):
        build_pooling("median", HIDDEN, N_LAYERS)
