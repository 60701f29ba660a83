"""Pretraining streams its source from the PNG files: the same tensors, so the same model."""

import pytest
import torch

from tasks.core.params import default_section
from tasks.data.datasets import prepare_dataset
from tasks.data.loading import ImageFiles, load_tensors, stream_tensors
from tasks.modeling.batches import accuracy
from tasks.modeling.models import create_model
from tasks.modeling.training import fit

PRE = default_section("preprocess", image_size=16, channels=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "source"
    spec = default_section(
        "data.source", builtin="mnist5k", limit=120, test_fraction=0.2, val_per_class=0
    )
    prepare_dataset(spec, 0, out)
    return out


@pytest.mark.parametrize(("degrade", "fit_frame"), [(None, False), (8, False), (8, True)])
def test_streamed_rows_equal_the_in_memory_rows(source, degrade, fit_frame):
    x, y, classes = load_tensors(source, "train", PRE, degrade, fit_frame)
    files, labels, streamed_classes = stream_tensors(source, "train", PRE, degrade, fit_frame)
    assert len(files) == len(x) and torch.equal(labels, y) and streamed_classes == classes
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:17]
    assert torch.equal(files[idx], x[idx])
    assert torch.equal(files[5:40], x[5:40])
    assert torch.equal(files[3], x[3])


@pytest.mark.slow  # seconds on an idle machine; much more on a loaded one
def test_streamed_training_gives_the_same_model(source):
    cfg = default_section(
        "pretrain", epochs=1, batch_size=16, lr=3e-3, augment_shift=1, warmup_epochs=0
    )
    x, y, _ = load_tensors(source, "train", PRE, 8)
    files, labels, _ = stream_tensors(source, "train", PRE, 8)
    in_memory, streamed = create_model("resnet10t", 10, 1, 0), create_model("resnet10t", 10, 1, 0)
    x, y, labels = x[:48], y[:48], labels[:48]  # three steps suffice
    files = ImageFiles(files.paths[:48], files.cfg, files.degrade_to)
    a = fit(in_memory, (x, y), cfg, seed=1, val=(x, y))
    b = fit(streamed, (files, labels), cfg, seed=1, val=(files, labels))
    assert a.epochs == b.epochs
    for (name, p), (_, q) in zip(
        in_memory.state_dict().items(), streamed.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    assert accuracy(streamed, files, labels) == accuracy(in_memory, x, y)
