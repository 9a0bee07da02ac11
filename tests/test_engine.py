"""The shared training engine: batches per process, RNG states, checkpoints, one optimisation step."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from common.train.engine import (
    Engine,
    TrainingError,
    epoch_batches,
    read_checkpoint,
    remove_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)


def test_epoch_batches_are_seeded_and_shared_out_between_processes():
    lengths = np.random.default_rng(0).integers(10, 500, size=103)
    rows = np.arange(3, 103)
    whole = epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=0)
    assert sorted(i for b in whole for i in b) == rows.tolist()
    assert whole == epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=0)
    assert whole != epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=1)
    shares = [epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=0, rank=r, world=3) for r in range(3)]
    assert len({len(share) for share in shares}) == 1  # every process takes as many steps
    flat = [i for share in shares for b in share for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(rows.tolist())


def test_token_budget_batches_hold_more_short_essays_and_keep_the_budget():
    lengths = np.random.default_rng(0).integers(10, 500, size=303)
    rows = np.arange(3, 303)
    batches = epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=0, batch_tokens=2000)
    assert sorted(i for b in batches for i in b) == rows.tolist()  # every row once
    assert all(len(b) == 1 or len(b) * lengths[b].max() <= 2000 for b in batches)
    sizes = {min(lengths[b]): len(b) for b in batches}
    assert sizes[min(sizes)] > sizes[max(sizes)]  # the shortest essays come many to a batch, the longest few
    assert batches == epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=0, batch_tokens=2000)
    assert batches != epoch_batches(lengths, rows, batch_size=8, seed=1, epoch=1, batch_tokens=2000)
    shares = [epoch_batches(lengths, rows, 8, 1, 0, rank=r, world=2, batch_tokens=2000) for r in range(2)]
    assert len(shares[0]) == len(shares[1])


def test_rng_state_round_trip():
    seed_everything(3)
    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_checkpoints_of_other_settings_are_ignored_and_damaged_ones_refused(tmp_path):
    engine = Engine("cpu", "auto")
    path = tmp_path / "checkpoint.pt"
    assert read_checkpoint(path, "abc") is None
    engine.save_checkpoint(path, "abc", {"state": {"step": 4}, "weights": torch.ones(2)}, step=4)
    loaded = read_checkpoint(path, "abc")
    assert loaded["state"] == {"step": 4} and loaded["fingerprint"] == "abc" and "rng" in loaded
    assert read_checkpoint(path, "other settings") is None
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot be loaded safely"):
        read_checkpoint(path, "abc")
    remove_checkpoint(path)
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_one_step_clips_steps_and_zeroes():
    engine = Engine("cpu", "no")
    assert engine.precision == "no" and engine.world == 1 and engine.is_main
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    wrapped, optimizer = engine.prepare(model, optimizer)
    before = model.weight.detach().clone()
    with engine.autocast():
        loss = (wrapped(torch.ones(2, 4)) * 1000.0).sum()
    engine.backward(loss)
    grads = []
    unclipped = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    result = engine.step(wrapped, optimizer, scheduler, max_grad_norm=1.0,
                         inspect=lambda: grads.append(model.weight.grad.norm().item()))
    assert result.stepped and result.grad_norm == pytest.approx(unclipped)  # the norm before clipping
    assert grads and grads[0] <= 1.0 + 1e-5  # inspect saw the clipped gradients, before the step
    moved = (model.weight.detach() - before).norm()
    assert 0 < moved <= 1.0 + 1e-5  # the gradient was clipped to norm 1 (lr 1)
    assert model.weight.grad is None and scheduler.get_last_lr() == [0.5]


def test_a_step_without_clipping_is_a_plain_step_and_unscales_only_its_own_optimizer(monkeypatch):
    torch.manual_seed(0)
    reference, model = nn.Linear(4, 1), nn.Linear(4, 1)
    model.load_state_dict(reference.state_dict())
    engine = Engine("cpu", "no")
    wrapped, optimizer = engine.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    seen = []
    monkeypatch.setattr(engine.accelerator, "unscale_gradients", lambda optimizer=None: seen.append(optimizer))
    plain = torch.optim.SGD(reference.parameters(), lr=1.0)
    for net in (reference, wrapped):
        (net(torch.ones(2, 4)) * 1000.0).sum().backward()
    plain.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    result = engine.step(wrapped, optimizer, scheduler, max_grad_norm=0)
    assert result.stepped and result.grad_norm > 1000  # reported, not clipped
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=0)
    # Stage by stage, one optimizer each: only this step's optimizer is unscaled (fp16), never all of them.
    assert seen == [optimizer]
