"""The pieces behind the strategies, on known cases: gradient reversal, MMD, L2-SP, the probe
folded into a head, negative-transfer flags, freezing by timm stage groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.evaluation.metrics import negative_transfer
from tasks.modeling.features import cached_features, fit_probe, model_hash, set_head
from tasks.modeling.models import create_model, freeze_stages, unfreeze_modules
from tasks.modeling.objectives import L2SP, dann_schedule, grad_reverse, mk_mmd


def test_grad_reverse_flips_and_scales_the_gradient():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    assert dann_schedule(0.0) == 0.0 and 0.99 < dann_schedule(1.0) < 1.0


def test_mmd_is_zero_for_one_distribution_and_grows_with_shift():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, generator=gen)
    b = torch.randn(64, 8, generator=gen)
    assert mk_mmd(a, a).abs() < 1e-6
    assert mk_mmd(a, b) < mk_mmd(a, b + 1.0) < mk_mmd(a, b + 3.0)


def test_l2sp_penalty_is_zero_at_the_source_and_counts_new_weights():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    objective = L2SP(model, alpha=2.0, beta=4.0, new_names={"1.weight", "1.bias"})
    new = sum(p.pow(2).sum() for p in model[1].parameters())
    assert objective.penalty(model).item() == pytest.approx(0.5 * 4.0 * new.item(), rel=1e-6)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    shared = 0.5 * 2.0 * model[0].weight.numel()
    assert objective.penalty(model).item() == pytest.approx(shared + 2.0 * new.item(), rel=1e-5)
    assert objective.weight_decay_groups() is False


def test_probe_folded_into_the_head_predicts_like_sklearn():
    from sklearn.linear_model import LogisticRegression

    gen = np.random.default_rng(0)
    x = gen.normal(size=(120, 6)) * [1, 10, 0.1, 1, 1, 1] + [0, 5, 0, 0, 0, 0]
    y = np.repeat(np.arange(4), 30)
    x[np.arange(120), y] += 3.0
    weight, bias = fit_probe(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 5, 1.0, 0)
    z = (x - x.mean(0)) / x.std()
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(z, y)
    ours = (torch.tensor(x, dtype=torch.float32) @ weight.T + bias).argmax(1).numpy()
    assert (ours == ref.predict(z)).mean() > 0.99
    assert (ours != 4).all()  # a class absent from training is never predicted


def test_features_are_cached_by_model_and_data(tmp_path):
    model = create_model("resnet10t", 10, 1, seed=0)
    inputs = torch.randn(8, 1, 16, 16)
    first = cached_features(model, inputs, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(cached_features(model, inputs, tmp_path), first)
    set_head(model, torch.zeros(3, model.num_features), torch.zeros(3))
    assert model(inputs).shape == (8, 3)
    cached_features(model, inputs, tmp_path)  # new head, new hash, new entry
    assert len(list(tmp_path.iterdir())) == 2
    assert model_hash(model) != model_hash(create_model("resnet10t", 10, 1, seed=0))


def test_freeze_stages_uses_timm_groups_and_unfreezes_cleanly():
    model = create_model("resnet10t", 10, 1, seed=0)
    keys = set(model.state_dict())
    frozen = freeze_stages(model, 2)
    assert {n.split(".")[0] for n in frozen} == {"conv1", "bn1", "layer1"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv1", "layer1")) for n in trainable)
    assert any(n.startswith("layer2") for n in trainable) and "fc.weight" in trainable
    unfreeze_modules(model, frozen)
    assert set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="freeze_stages"):
        freeze_stages(create_model("resnet10t", 10, 1), 6)


def test_negative_transfer_flag_uses_noise():
    base = {"accuracy": 0.80, "n": 500}
    worse, tie = {"accuracy": 0.70, "n": 500}, {"accuracy": 0.79, "n": 500}
    flags = negative_transfer({"scratch": base, "worse": worse, "tie": tie})
    assert flags["worse"]["negative"] and not flags["tie"]["negative"]
    assert flags["tie"]["gain"] == pytest.approx(-0.01)
    tight = negative_transfer({"scratch": base, "tie": {"accuracy": 0.79, "n": 500}}, margin=0.001)
    assert tight["tie"]["negative"]
    assert negative_transfer({"full": base}) == {}
