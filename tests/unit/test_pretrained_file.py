"""A source model from a local timm checkpoint file: timm adapts in_chans and num_classes."""

from __future__ import annotations

import pytest
import torch


def _write_checkpoint(path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    donor = timm.create_model("resnet10t", pretrained=False, num_classes=1000, in_chans=3)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    return donor.state_dict()


def test_checkpoint_file_is_loaded_and_adapted(tmp_path):
    from tasks.modeling.models import create_from_file

    donor = _write_checkpoint(tmp_path / "weights.safetensors")
    model = create_from_file("resnet10t", tmp_path / "weights.safetensors", 10, 1)
    state = model.state_dict()
    assert torch.equal(state["layer3.0.conv1.weight"], donor["layer3.0.conv1.weight"])
    # three input channels folded into one by timm (summed filters), head resized to 10
    assert torch.allclose(state["conv1.0.weight"], donor["conv1.0.weight"].sum(1, keepdim=True))
    assert state["fc.weight"].shape == (10, 512)


def test_missing_or_mismatched_checkpoint_is_named(tmp_path):
    from tasks.modeling.models import create_from_file

    with pytest.raises(FileNotFoundError, match="pretrain.checkpoint"):
        create_from_file("resnet10t", tmp_path / "nope.safetensors", 10, 1)
    _write_checkpoint(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="pretrain.checkpoint"):
        create_from_file("resnet18", tmp_path / "w.safetensors", 10, 1)


def test_pretrain_stage_starts_from_the_file(tmp_path, project_root):
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params
    from tasks.modeling.models import load_checkpoint
    from tasks.stages import prepare as datasets
    from tasks.stages import pretrain

    _write_checkpoint(tmp_path / "w.safetensors")
    params = resolve_params(
        project_root / "params.yaml",
        "smoke",
        [
            f"storage.tracking_uri=sqlite:///{tmp_path}/m.db",
            "pretrain.checkpoint=w.safetensors",
            "pretrain.train_on_source=true",
            "pretrain.epochs=1",
            "data.source.limit=200",
        ],
    )
    ctx = open_context(tmp_path, params)
    datasets.run(ctx)
    result = pretrain.run(ctx)
    model, card = load_checkpoint(ctx.layout.source_model)
    assert card.num_classes == 10 and result["train_images"] > 0
    assert model.get_classifier().weight.shape == (10, 512)
