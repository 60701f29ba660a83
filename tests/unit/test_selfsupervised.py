"""Self-supervised pretraining (tasks/modeling/selfsupervised.py) and its kNN monitor
(tasks/modeling/monitor.py), on tiny synthetic images and resnet10t at 16 px."""

import math

import pytest
import torch

from tasks.core.params import default_section
from tasks.modeling.models import create_model
from tasks.modeling.monitor import KnnMonitor
from tasks.modeling.selfsupervised import BYOL, train_self_supervised
from tasks.modeling.training import _setup
from tasks.modeling.views import two_views

MEAN, STD = (0.5,), (0.25,)
SSL = default_section("pretrain.ssl", projection_dim=16, hidden_dim=32, crop_scale=[0.5, 1.0])


def _cfg(objective: str, epochs: int = 4, batch_size: int = 16):
    return default_section(
        "pretrain",
        objective=objective,
        epochs=epochs,
        batch_size=batch_size,
        lr=3e-3,
        warmup_epochs=0,
        ssl=SSL.model_dump(mode="json"),
    )


def _patterns(n: int):
    """Two very different kinds of image: horizontal stripes and a centred disc, noisy."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    stripes = ((yy // 2) % 2).expand(n // 2, 1, 16, 16)
    disc = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 20).float().expand(n // 2, 1, 16, 16)
    pixels = torch.cat([stripes, disc]) * 0.8 + 0.2 * torch.rand(n, 1, 16, 16, generator=gen)
    return (pixels - MEAN[0]) / STD[0], torch.arange(n) // (n // 2)


def _model():
    return create_model("resnet10t", 2, 1, seed=0)


@pytest.mark.parametrize("objective", ["simclr", "byol"])
def test_loss_falls_and_the_monitor_is_logged_each_epoch(objective, caplog):
    x, y = _patterns(32)
    monitor = KnnMonitor(x[::2], y[::2], x[1::2], y[1::2], k=5)
    seen = []
    caplog.set_level("INFO", logger="tasks")
    history = train_self_supervised(
        _model(),
        x,
        _cfg(objective),
        seed=0,
        mean=MEAN,
        std=STD,
        monitor=monitor,
        on_epoch=lambda epoch, m: seen.append((epoch, m["knn_accuracy"])),
        progress=objective,
    )
    losses = [e["train_loss"] for e in history.epochs]
    assert losses[-1] < losses[0] - 0.1, losses
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert all(0.0 <= acc <= 1.0 for _, acc in seen)
    assert {"train_loss", "objective_loss", "lr", "knn_accuracy"} == history.final.keys()
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.modeling.training"]
    assert lines[-1] == (
        f"{objective}: epoch 4/4, loss {losses[-1]:.4f}, "
        f"knn accuracy {history.final['knn_accuracy']:.4f}"
    )


def test_same_seed_same_weights():
    x, _ = _patterns(16)
    a, b = _model(), _model()
    for model in (a, b):
        train_self_supervised(model, x, _cfg("byol", epochs=1), seed=3, mean=MEAN, std=STD)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_byol_target_moves_by_ema_only():
    x, _ = _patterns(16)
    model = _model()
    byol = BYOL(model, SSL)
    target = byol.extra_modules()["target"]
    _, optimizer, _, _ = _setup(model, byol, _cfg("byol"), 0.1, None, torch.device("cpu"), 16)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in target.parameters())
    v1, v2 = two_views(x, SSL, torch.Generator().manual_seed(0), MEAN, STD)
    byol.pair_loss(model, v1, v2).backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    before = [p.detach().clone() for p in target["backbone"].parameters()]
    byol.after_step(model, 0, 10)
    m = SSL.momentum  # the cosine schedule starts at ssl.momentum
    for old, new, online in zip(
        before, target["backbone"].parameters(), model.parameters(), strict=True
    ):
        torch.testing.assert_close(new, m * old + (1 - m) * online)
    moved = [not torch.equal(t, o) for t, o in zip(before, model.parameters(), strict=True)]
    assert any(moved)  # the online network stepped away from the target


def test_resumes_to_the_same_weights(tmp_path):
    x, _ = _patterns(16)
    cfg = _cfg("byol", epochs=3, batch_size=8)
    whole = _model()
    expected = train_self_supervised(whole, x, cfg, seed=1, mean=MEAN, std=STD)

    def crash(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        train_self_supervised(
            _model(), x, cfg, seed=1, mean=MEAN, std=STD, state_dir=state, on_epoch=crash
        )
    resumed = _model()
    history = train_self_supervised(resumed, x, cfg, seed=1, mean=MEAN, std=STD, state_dir=state)
    assert history.epochs == expected.epochs
    for (name, pa), pb in zip(
        whole.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    assert not state.exists()


def test_supervised_objective_is_refused_by_key():
    x, _ = _patterns(16)
    with pytest.raises(ValueError, match="pretrain.objective: supervised"):
        train_self_supervised(_model(), x, _cfg("supervised"), seed=0, mean=MEAN, std=STD)


class _InputFeatures(torch.nn.Module):
    """A model whose pooled features are its (flattened) input: an identity linear layer."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        torch.nn.init.eye_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward_features(self, x):
        return self.linear(x.flatten(1))

    def forward_head(self, x, pre_logits=False):
        return x


def _clusters(n: int, gen: torch.Generator):
    labels = torch.arange(n) % 2
    centres = torch.tensor([[4.0, 0, 0, 0], [-4.0, 0, 0, 0]])
    return centres[labels] + torch.randn(n, 4, generator=gen), labels


def test_knn_monitor_scores_separable_features_and_chance_on_shuffled_labels():
    gen = torch.Generator().manual_seed(0)
    (bank, bank_y), (queries, query_y) = _clusters(100, gen), _clusters(400, gen)
    model = _InputFeatures(4).train()
    assert KnnMonitor(bank, bank_y, queries, query_y, k=20)(model) == 1.0
    assert model.training  # its mode is restored
    shuffled = bank_y[torch.randperm(100, generator=gen)]
    assert 0.35 < KnnMonitor(bank, shuffled, queries, query_y, k=20)(model) < 0.65
    # k beyond the bank is capped; no queries: NaN
    assert KnnMonitor(bank[:3], bank_y[:3], queries, query_y, k=50)(model.eval()) > 0.9
    assert not model.training
    assert math.isnan(KnnMonitor(bank, bank_y, queries[:0], query_y[:0], k=5)(model))
