"""Instance weights (tasks/modeling/weighting.py) on constructed feature clouds, and the
weighted draws of the training loop's StepContext."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.modeling.training import StepContext
from tasks.modeling.weighting import clip_weights, density_ratio_weights, kish_ess


def _cloud(rng, n: int, centre: float, dim: int = 8) -> np.ndarray:
    return rng.normal(centre, 1.0, size=(n, dim))


def _two_cluster_case(seed: int = 0):
    """Source: clusters A (class "a") and B (class "b", far away); target: drawn from A only."""
    rng = np.random.default_rng(seed)
    source = np.concatenate([_cloud(rng, 150, 0.0), _cloud(rng, 150, 4.0)])
    labels = torch.tensor([0] * 150 + [1] * 150)
    target = _cloud(rng, 120, 0.0)
    return torch.from_numpy(source).float(), torch.from_numpy(target).float(), labels


def test_target_like_source_images_weigh_more_and_by_class_shows_it():
    source, target, labels = _two_cluster_case()
    w = density_ratio_weights(
        source, target, clip=10.0, seed=0, source_labels=labels, source_classes=("a", "b")
    )
    a, b = w.weights[:150].mean(), w.weights[150:].mean()
    assert a > 5 * b, (a, b)
    assert w.by_class["a"]["mean_weight"] == pytest.approx(a)
    assert w.by_class["a"]["weight_share"] > 0.85
    assert w.by_class["a"]["weight_share"] + w.by_class["b"]["weight_share"] == pytest.approx(1)
    assert w.by_class["b"]["images"] == 150
    assert w.domain_auc > 0.7  # B is trivially told from the target
    # mean 1, capped, the Kish ESS, and a histogram of every weight on [0, clip]
    assert w.weights.dtype == np.float64 and len(w.weights) == 300
    assert w.weights.mean() == pytest.approx(1.0)
    assert w.weights.max() <= 10.0 + 1e-12
    assert w.ess == pytest.approx(w.weights.sum() ** 2 / (w.weights**2).sum())
    assert w.ess_fraction == pytest.approx(w.ess / 300)
    assert sum(w.histogram["counts"]) == 300 and w.histogram["edges"][-1] == 10.0
    summary = w.summary()
    assert summary["by_class"] == w.by_class and summary["ess"] == w.ess
    again = density_ratio_weights(source, target, clip=10.0, seed=0)
    assert np.array_equal(again.weights, w.weights)  # same seed, same folds, same weights
    assert again.by_class == {}


def test_one_distribution_gives_weights_near_one_and_chance_auc():
    rng = np.random.default_rng(1)
    w = density_ratio_weights(_cloud(rng, 1000, 0.0), _cloud(rng, 1000, 0.0), clip=10.0, seed=0)
    assert abs(w.domain_auc - 0.5) < 0.05
    assert np.abs(w.weights - 1.0).mean() < 0.15  # 0.09-0.12 over seeds
    assert w.ess_fraction > 0.95 and w.clipped == 0


def test_clipping_holds_the_mean_at_one_under_the_cap():
    weights, clipped = clip_weights(np.array([100.0, 50.0, 1.0, 1.0, 1.0, 1.0]), clip=2.0)
    assert clipped == 2 and weights[:2].tolist() == [2.0, 2.0]
    assert weights.mean() == pytest.approx(1.0) and weights.max() <= 2.0
    assert kish_ess(np.ones(7)) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="transfer.instance_weighting"):
        density_ratio_weights(np.zeros((5, 2)), np.zeros((1, 2)), clip=10.0, seed=0)


def _ctx(seed: int) -> StepContext:
    return StepContext(torch.Generator().manual_seed(seed), 0.0, torch.device("cpu"), 0)


def test_weighted_draws_take_the_weighted_rows_and_no_weights_draw_as_before():
    inputs = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    labels = torch.arange(10)
    weights = torch.zeros(10, dtype=torch.float64)
    weights[[2, 7]] = torch.tensor([1.0, 3.0], dtype=torch.float64)
    x, y = _ctx(0).sample_labelled(inputs, labels, 400, weights)
    assert set(y.tolist()) == {2, 7} and torch.equal(x.view(-1).long(), y)
    assert 0.65 < (y == 7).float().mean().item() < 0.85  # 3 to 1
    assert set(_ctx(0).sample(inputs, 50, weights).view(-1).long().tolist()) <= {2, 7}
    # without weights: exactly the uniform randint draws of the code before weighting
    expected = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_ctx(3).sample_labelled(inputs, labels, 32)[1], expected)
    assert torch.equal(_ctx(3).sample(inputs, 32).view(-1).long(), expected)
    with pytest.raises(ValueError, match="9 weights for 10 rows"):
        _ctx(0).sample(inputs, 4, weights[:9])
