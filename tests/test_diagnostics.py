"""Tests of common/train/diagnostics.py: the LR range test on analytic curves and a quadratic bowl, the profiler's files,
layer-group gradient norms and activation statistics on a small stand-in scorer, and the training watch."""

from __future__ import annotations

import json
import logging
import math
import re

import matplotlib.axes
import numpy as np
import pytest
import torch
from torch import nn

from common.train.diagnostics import (
    LRRangeResult,
    Profiler,
    TrainingWatch,
    activation_stats,
    grad_stats,
    layer_groups,
    lr_range_test,
    plot_lr_range,
    steepest_lr,
    suggest_lr,
)

METRIC_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")
"""A dvclive-friendly metric name with "/" as separator."""


def falling_curve(lr: float) -> float:
    """A loss that falls fastest at lr = 1e-3 (a tanh in log10(lr)) and blows up past 1e-1."""
    x = math.log10(lr)
    return 2 - math.tanh(2 * (x + 3)) + math.exp(5 * (x + 1))


# ----------------------------------------------------------------------------------------------- LR range test


def test_steepest_is_the_steepest_descent_of_the_curve():
    result = lr_range_test(falling_curve, smoothing=0.0)
    grid_step = 7 / 99  # decades between two lrs of the default grid
    assert abs(math.log10(result.steepest_lr) + 3) <= grid_step


def test_the_suggestion_is_a_tenth_of_the_rate_at_the_lowest_loss():
    result = lr_range_test(falling_curve, smoothing=0.0)
    lowest = result.lrs[int(np.argmin(result.smoothed))]
    assert result.suggested_lr == pytest.approx(lowest / 10)
    assert 1e-3 < result.suggested_lr < 1e-2  # past the steepest point, a decade below the bottom


def test_a_chance_dip_among_the_first_rates_does_not_move_the_suggestion():
    def step(lr: float) -> float:  # a noisy dip at 4e-6, then the real, slow descent to the bottom near 2.5e-2
        return falling_curve(lr) - (0.5 if 2e-6 < lr < 8e-6 else 0.0)

    result = lr_range_test(step, smoothing=0.0)
    assert result.steepest_lr < 1e-5  # the dip is the steepest slope
    assert 1e-3 < result.suggested_lr < 1e-2  # the suggestion is where the loss bottoms out, a decade down


def test_smoothing_finds_the_descent_in_a_noisy_curve():
    rng = np.random.default_rng(0)
    result = lr_range_test(lambda lr: falling_curve(lr) * (1 + 0.05 * rng.standard_normal()))
    assert 5e-4 < result.steepest_lr < 1e-2  # the moving average lags: the steepest point lands a little later
    assert 1e-3 < result.suggested_lr < 2e-2


def test_the_first_tenth_of_the_steps_is_not_searched():
    calls = []

    def step(lr: float) -> float:  # the first 10 losses jump up and down: steep but meaningless slopes
        calls.append(lr)
        return falling_curve(lr) + (3.0 if len(calls) <= 10 and len(calls) % 2 else 0.0)

    result = lr_range_test(step, smoothing=0.0)
    assert abs(math.log10(result.steepest_lr) + 3) <= 7 / 99


def test_points_after_the_minimum_are_not_searched():
    lrs = [10.0 ** -k for k in range(8, 0, -1)]
    smoothed = [5.0, 4.0, 3.0, 2.9, 8.0, 8.1, 2.95, 30.0]  # after the minimum (2.9) it bounces: 8.1 -> 2.95 is steeper
    assert steepest_lr(lrs, smoothed) in lrs[:2]
    assert suggest_lr(lrs, smoothed) == pytest.approx(lrs[3] / 10)  # the minimum, not the bounce after it


def test_divergence_stops_the_test_at_the_first_point_past_the_factor():
    result = lr_range_test(falling_curve, smoothing=0.0, diverge_factor=4.0)
    assert result.diverged
    assert len(result.lrs) < 100 and result.lrs[-1] < 0.5
    best_before = min(result.smoothed[:-1])
    assert result.smoothed[-1] > 4 * best_before
    assert max(result.smoothed[:-1]) <= 4 * min(result.smoothed[:-2])


def test_quadratic_bowl_diverges_past_the_stability_limit_of_gradient_descent():
    torch.manual_seed(0)
    inputs = torch.randn(64, 4) * torch.tensor([1.0, 0.5, 0.3, 0.2])
    targets = inputs @ torch.randn(4)
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stable_below = 2 / torch.linalg.eigvalsh(2 * inputs.T @ inputs / len(inputs)).max().item()

    def step(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = nn.functional.mse_loss(model(inputs).squeeze(-1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    result = lr_range_test(step, lr_min=1e-4, lr_max=100.0)
    assert result.diverged and result.lrs[-1] < 100.0
    assert result.lrs[-1] > stable_below  # stopped by the real blow-up, not by noise
    assert 1e-3 < result.suggested_lr < stable_below


def test_non_finite_loss_stops_at_once():
    calls = []

    def step(lr: float) -> float:
        calls.append(lr)
        return math.nan if lr > 1e-3 else 1.0 / (1 + lr)

    result = lr_range_test(step)
    assert len(calls) == len(result.lrs) < 100
    assert math.isnan(result.losses[-1]) and all(lr <= 1e-3 for lr in calls[:-1])
    assert result.diverged


def test_bias_corrected_average_of_a_constant_is_the_constant():
    result = lr_range_test(lambda lr: 2.0, steps=20)
    assert result.smoothed == pytest.approx([2.0] * 20)
    assert not result.diverged and len(result.lrs) == 20
    assert result.lrs[0] == pytest.approx(1e-7) and result.lrs[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log(result.lrs)), np.log(1e7) / 19)  # geometric grid
    assert result.suggested_lr is None  # a loss that never falls has no steepest descent


def test_a_loss_that_only_rises_has_no_suggestion():
    result = lr_range_test(lambda lr: 1.0 + 1e3 * lr, smoothing=0.0)
    assert result.suggested_lr is None


@pytest.mark.parametrize("kwargs", [{"lr_min": 0.0}, {"lr_min": 1.0, "lr_max": 0.1}, {"steps": 1},
                                    {"smoothing": 1.0}, {"diverge_factor": 1.0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        lr_range_test(lambda lr: 1.0, **kwargs)


def test_to_frame_and_plot(tmp_path, monkeypatch):
    result = lr_range_test(falling_curve, smoothing=0.5)
    frame = result.to_frame()
    assert list(frame.columns) == ["lr", "loss", "smoothed_loss"] and len(frame) == len(result.lrs)
    assert frame["smoothed_loss"].tolist() == result.smoothed
    lines = []
    original = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda ax, x, **kw: lines.append(x) or original(ax, x, **kw))
    plot_lr_range(result, tmp_path / "lr_range.png")
    assert (tmp_path / "lr_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines == [result.suggested_lr]
    assert [p.name for p in tmp_path.iterdir()] == ["lr_range.png"]  # no temporary file left
    plot_lr_range(LRRangeResult([1e-3, 1e-2], [1.0, 2.0], [1.0, 2.0], None, False), tmp_path / "none.png")
    assert lines == [result.suggested_lr]


# ----------------------------------------------------------------------------------------------------- profiler


def test_profiler_writes_a_chrome_trace_and_a_table(tmp_path):
    weights = torch.randn(32, 32)
    with Profiler(tmp_path / "profile", steps=3) as profiler:
        for _ in range(6):
            weights = torch.mm(weights, weights)
            weights = weights / weights.norm()
            profiler.step()
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    assert trace["traceEvents"]
    assert "aten::mm" in (tmp_path / "profile" / "profile.txt").read_text()


def test_zero_steps_never_touches_torch_profiler(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.profiler.profile was called")

    monkeypatch.setattr(torch.profiler, "profile", refuse)
    with Profiler(tmp_path / "profile", steps=0) as profiler:
        profiler.step()
    assert not (tmp_path / "profile").exists()


# ----------------------------------------------------------------------------------------- layer-group statistics


class StandIn(nn.Module):
    """EssayScorer's shape: embeddings, a list of encoder layers, a pooling (in no group) and a head."""

    def __init__(self, n_layers: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.embeddings = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(n_layers))
        self.pooling = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def encoder_layers(self) -> list[nn.Module]:
        return list(self.layers)

    def embeddings_module(self) -> nn.Module:
        return self.embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(ids)
        for layer in self.layers:
            hidden = torch.tanh(layer(hidden))
        return self.head(self.pooling(hidden).mean(1))


@pytest.mark.parametrize(("n_groups", "names"), [
    (2, ["layers_0-2", "layers_3-5"]),
    (4, ["layers_0-1", "layers_2-3", "layers_4-4", "layers_5-5"]),
    (9, [f"layers_{i}-{i}" for i in range(6)]),
])
def test_layer_groups_are_contiguous_chunks(n_groups, names):
    model = StandIn()
    groups = layer_groups(model, n_groups)
    assert list(groups) == ["embeddings", *names, "head"]
    layered = [p for name in names for p in groups[name]]
    assert [id(p) for p in layered] == [id(p) for layer in model.layers for p in layer.parameters()]
    assert [id(p) for p in groups["head"]] == [id(p) for p in model.head.parameters()]
    assert [id(p) for p in groups["embeddings"]] == [id(model.embeddings.weight)]


def test_grad_stats_are_group_norms():
    model = StandIn()
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)  # 4 x 9
    model.head.bias.grad = torch.full_like(model.head.bias, 8.0)  # 64
    stats = grad_stats({"head": model.head.parameters(), "embeddings": model.embeddings.parameters()})
    assert stats == {"layer_grad_norm/head": pytest.approx(10.0), "layer_grad_norm/embeddings": 0.0}  # no grad: 0


def test_grad_stats_add_up_to_the_total_norm():
    model = StandIn()
    model(torch.tensor([[1, 2, 3], [4, 5, 6]])).square().sum().backward()
    groups = layer_groups(model, n_groups=3)
    stats = grad_stats(groups)
    assert all(METRIC_NAME.match(key) for key in stats)
    assert all(value > 0 for value in stats.values())
    in_groups = [p for params in groups.values() for p in params]
    total = torch.nn.utils.clip_grad_norm_(in_groups, max_norm=math.inf).item()
    assert math.sqrt(sum(v * v for v in stats.values())) == pytest.approx(total, rel=1e-5)


class Pair(nn.Module):
    """Returns a tuple, as transformer layers do: (hidden, None)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return 2 * x, None


def test_activation_stats_in_eval_mode_without_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Dropout(0.9), Pair())
    model.train()
    inputs = torch.randn(8, 3)
    expected = torch.relu(model[0](inputs)).detach()
    grad_enabled = []

    def run_forward() -> torch.Tensor:
        grad_enabled.append(torch.is_grad_enabled())
        return model(inputs)

    stats = activation_stats(model, run_forward, {"relu": model[1], "dropout": model[2], "pair": model[3]})
    assert set(stats) == {f"act_{kind}/{name}" for kind in ("mean", "std") for name in ("relu", "dropout", "pair")}
    assert all(METRIC_NAME.match(key) for key in stats)
    assert stats["act_mean/relu"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert stats["act_std/relu"] == pytest.approx(expected.std(unbiased=False).item(), rel=1e-6)
    assert stats["act_mean/dropout"] == pytest.approx(stats["act_mean/relu"])  # eval: dropout is the identity
    assert stats["act_mean/pair"] == pytest.approx(2 * stats["act_mean/relu"])  # first tensor of the tuple
    assert grad_enabled == [False]
    assert model.training  # mode restored
    assert all(not module._forward_hooks for module in model)


def test_activation_stats_cover_every_call():
    layer = nn.Linear(2, 2)
    model = nn.Sequential(layer)
    a, b = torch.zeros(1, 2), torch.ones(1, 2)
    stats = activation_stats(model, lambda: (model(a), model(b)), {"layer": layer})
    both = torch.cat([layer(a), layer(b)]).detach()
    assert stats["act_mean/layer"] == pytest.approx(both.mean().item())
    assert stats["act_std/layer"] == pytest.approx(both.std(unbiased=False).item())


def test_activation_stats_clean_up_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2))
    model.train()

    def fail() -> None:
        model(torch.zeros(1, 2))
        raise RuntimeError("batch failed")

    with pytest.raises(RuntimeError, match="batch failed"):
        activation_stats(model, fail, {"linear": model[0]})
    assert not model[0]._forward_hooks and model.training


def test_activation_stats_refuse_modules_outside_the_model_or_never_run():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not part of the model"):
        activation_stats(model, lambda: None, {"stray": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="did not run"):
        activation_stats(model, lambda: model[0](torch.zeros(1, 2)), {"second": model[1]})


# ---------------------------------------------------------------------------------------------- training watch


def run_watch(watch: TrainingWatch, losses, norms=None) -> list[str]:
    norms = [None] * len(losses) if norms is None else norms
    return [m for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)) for m in watch.update(step, loss, norm)]


def test_flat_loss_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="common.train.diagnostics"):
        messages = run_watch(TrainingWatch(flat_steps=50), [0.6931] * 150)
    assert len(messages) == 1 and messages[0].startswith("step 49:")
    assert "flat at 0.6931" in messages[0] and "learning rate" in messages[0] and "frozen" in messages[0]
    assert [r.getMessage() for r in caplog.records] == messages


def test_decreasing_loss_is_not_flat():
    assert run_watch(TrainingWatch(), [1.0 / (1 + 0.01 * step) for step in range(400)]) == []


def test_flat_warns_again_after_it_cleared():
    losses = [1.0] * 60 + [1.0 - 0.01 * i for i in range(60)] + [0.4] * 60
    assert len(run_watch(TrainingWatch(flat_steps=20), losses)) == 2


def test_gradient_spike_warns_with_numbers_and_fixes():
    norms = [1.0 + 0.01 * (i % 3) for i in range(20)] + [123.456789] + [1.0] * 5
    messages = run_watch(TrainingWatch(), [1.0 / (1 + i) for i in range(26)], norms)
    assert len(messages) == 1
    assert messages[0].startswith("step 20:") and "123.5" in messages[0] and "median 1.01" in messages[0]
    assert "max_grad_norm" in messages[0] and "bf16" in messages[0]


def test_spike_during_warmup_is_not_judged():
    norms = [1.0, 1.0, 500.0, 1.0]
    assert run_watch(TrainingWatch(warmup_steps=10), [1.0, 0.5, 0.3, 0.2], norms) == []


def test_nan_gradient_warns_once_per_episode():
    norms = [1.0, math.nan, math.nan, 1.0, math.inf]
    messages = run_watch(TrainingWatch(), [1.0, 0.9, 0.8, 0.7, 0.6], norms)
    assert len(messages) == 2 and "nan" in messages[0] and "inf" in messages[1]


def test_nan_loss_warns():
    messages = run_watch(TrainingWatch(), [1.0, math.nan])
    assert len(messages) == 1 and "loss is nan" in messages[0]
