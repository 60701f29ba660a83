import pytest
import torch

from tasks.core.params import default_section
from tasks.data.builtins import load_builtin
from tasks.data.preprocessing import preprocess
from tasks.modeling.batches import accuracy, predict_logits, random_shift
from tasks.modeling.models import ModelCard, create_model, load_checkpoint, save_checkpoint
from tasks.modeling.training import create_optimizer, fit

PRE = default_section("preprocess", image_size=16, channels=1)
# the training loop's knobs: params.yaml's pretrain section (min_steps 0), shrunk
CFG = default_section(
    "pretrain", epochs=4, batch_size=32, lr=3e-3, augment_shift=1, warmup_epochs=0
)


@pytest.fixture(scope="module")
def digits():
    raw = load_builtin("uci-digits")
    inputs = preprocess(raw.images[:256], PRE)
    return inputs, torch.as_tensor(raw.labels[:256])


def _model():
    return create_model("resnet10t", 10, 1)


def test_loss_falls_and_history_is_recorded(digits, caplog):
    seen = []
    caplog.set_level("INFO", logger="tasks")
    history = fit(
        _model(),
        digits,
        CFG,
        seed=0,
        val=digits,
        on_epoch=lambda e, m: seen.append(e),
        progress="pretrain",
    )
    losses = [e["train_loss"] for e in history.epochs]
    assert seen == [0, 1, 2, 3]
    assert losses[-1] < 0.5 * losses[0]
    assert {"train_loss", "train_accuracy", "lr", "val_accuracy"} <= history.final.keys()
    # one log line per epoch, with the loss and val accuracy of that epoch
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.modeling.training"]
    assert lines == [
        f"pretrain: epoch {i + 1}/4, loss {e['train_loss']:.4f}, "
        f"val accuracy {e['val_accuracy']:.4f}"
        for i, e in enumerate(history.epochs)
    ]


def test_seeded_init_is_reproducible():
    a, b = create_model("resnet10t", 10, 1, seed=5), create_model("resnet10t", 10, 1, seed=5)
    c = create_model("resnet10t", 10, 1, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_same_seed_same_weights(digits, caplog):
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    cfg = default_section(
        "pretrain", epochs=1, batch_size=64, lr=1e-3, augment_shift=2, warmup_epochs=0
    )
    caplog.set_level("INFO", logger="tasks")
    fit(a, digits, cfg, seed=3)
    fit(b, digits, cfg, seed=3)
    assert caplog.records == []  # no progress label (a DDP rank other than 0): silent
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_layer_decay_scales_early_layers():
    groups = create_optimizer(_model(), CFG, lr=1e-3, layer_decay=0.5).param_groups
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.1


def test_random_shift_keeps_shape_and_content():
    batch = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(batch, 0, gen), batch)
    shifted = random_shift(batch, 2, gen)
    assert shifted.shape == batch.shape and not torch.equal(shifted, batch)


def test_empty_training_set_is_refused():
    with pytest.raises(ValueError, match="training set is empty"):
        fit(_model(), (torch.empty(0, 1, 16, 16), torch.empty(0, dtype=torch.long)), CFG, seed=0)


def test_checkpoint_round_trip_is_exact(tmp_path, digits):
    model = _model().eval()
    card = ModelCard(arch="resnet10t", classes=tuple("0123456789"), preprocess=PRE, strategy="full")
    save_checkpoint(model, card, tmp_path / "ckpt")
    loaded, loaded_card = load_checkpoint(tmp_path / "ckpt")
    assert loaded_card == card
    assert torch.equal(predict_logits(model, digits[0][:8]), predict_logits(loaded, digits[0][:8]))
    assert 0.0 <= accuracy(loaded, *digits) <= 1.0


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="model.arch"):
        create_model("resnet_does_not_exist", 10, 1)


def test_min_steps_makes_an_epoch_of_a_few_images_take_several_passes(digits):
    from tasks.modeling.batches import epoch_batches, steps_per_epoch

    cfg = default_section("pretrain", epochs=3, batch_size=64, min_steps=24, warmup_epochs=0)
    assert steps_per_epoch(cfg, 10) == 8
    assert steps_per_epoch(cfg, 1000) == 16  # one pass already has enough steps
    batches = epoch_batches(10, 8, 64, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [10] * 8
    assert all(sorted(b.tolist()) == list(range(10)) for b in batches)  # whole passes
    one_pass = epoch_batches(100, 4, 32, torch.Generator().manual_seed(0))
    assert [len(b) for b in one_pass] == [32, 32, 32, 4]
    few = (digits[0][:10], digits[1][:10])
    history = fit(_model(), few, cfg, seed=0)
    assert len(history.epochs) == 3


def test_early_stopping_prefers_the_later_of_tied_epochs():
    from tasks.modeling.training import History, _improved, _patience_spent

    history = History([{"val_accuracy": 0.8}, {"val_accuracy": 0.9}, {"val_accuracy": 0.9}])
    history.best_epoch = 1
    assert _improved(history, 0.9) and not _improved(history, 0.85)
    assert _patience_spent(history, 1) and not _patience_spent(history, 2)
