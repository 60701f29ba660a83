"""Null preprocess values and a checkpoint's architecture come from the source model when
params are resolved (tasks/core/params/completion.py); explicit values always win. The
registered-model source (models:/) is in tests/integration/test_served_preprocessing.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tasks.core.params import ParamsError, resolve_params, resolved_text

NULLS = [f"preprocess.{k}=null" for k in ("image_size", "channels", "mean", "std", "interpolation")]
LITE0 = "pretrain.checkpoint=efficientnet-lite0"


def _resolve(project_root, *overrides: str):
    return resolve_params(project_root / "params.yaml", overrides=list(overrides))


def test_builtin_checkpoint_brings_its_arch_and_its_preprocessing(project_root):
    p = _resolve(project_root, LITE0, *NULLS)
    assert p.model.arch == "tf_efficientnet_lite0"
    pre = p.preprocess
    assert (pre.image_size, pre.channels, pre.interpolation) == (224, 3, "bicubic")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)


def test_explicit_values_win_and_stats_follow_forced_channels(project_root):
    p = _resolve(project_root, LITE0, *NULLS, "preprocess.image_size=64", "preprocess.channels=1")
    assert p.model.arch == "tf_efficientnet_lite0"
    assert (p.preprocess.image_size, p.preprocess.channels) == (64, 1)
    assert p.preprocess.mean == p.preprocess.std == (0.5,)
    assert p.preprocess.interpolation == "bicubic"
    # every value set (the digits default): only the architecture comes from the checkpoint
    digits = _resolve(project_root, LITE0)
    assert digits.model.arch == "tf_efficientnet_lite0"
    assert digits.preprocess == _resolve(project_root).preprocess


def test_without_a_checkpoint_model_arch_gives_the_configuration(project_root):
    p = _resolve(project_root, *NULLS)
    assert p.model.arch == "resnet10t"  # timm resnet10t.c3_in1k: 176 px, ImageNet stats
    assert (p.preprocess.image_size, p.preprocess.channels) == (176, 3)
    assert p.preprocess.mean == (0.485, 0.456, 0.406)
    assert p.preprocess.std == (0.229, 0.224, 0.225)
    grey = _resolve(project_root, *NULLS, "preprocess.channels=1")
    assert grey.preprocess.mean == (pytest.approx(0.449),)  # RGB stats averaged for grey


def test_a_weights_file_keeps_model_arch(project_root, tmp_path):
    weights = tmp_path / "weights.safetensors"  # never opened when params are resolved
    p = _resolve(project_root, f"pretrain.checkpoint={weights}", "model.arch=resnet18", *NULLS)
    assert p.model.arch == "resnet18" and p.preprocess.image_size == 224


def test_a_tlp_checkpoint_folder_gives_its_card(project_root, tmp_path):
    card = {
        "arch": "mobilenetv3_small_050",
        "classes": ["a", "b"],
        "preprocess": {"image_size": 40, "channels": 1, "mean": [0.2], "std": [0.3]},
    }  # a card from before interpolation existed: bilinear
    (tmp_path / "meta.json").write_text(json.dumps(card))
    p = _resolve(project_root, f"pretrain.checkpoint={tmp_path}", *NULLS, "preprocess.channels=3")
    assert p.model.arch == "mobilenetv3_small_050"
    assert p.preprocess.image_size == 40 and p.preprocess.interpolation == "bilinear"
    assert p.preprocess.channels == 3 and p.preprocess.mean == (0.2,) * 3  # grey stats repeated


def test_hub_name_uses_timm_static_configuration(project_root):
    p = _resolve(
        project_root,
        "pretrain.checkpoint=hub:tf_efficientnet_lite0.in1k",
        "pretrain.allow_download=true",
        *NULLS,
    )
    assert p.model.arch == "tf_efficientnet_lite0" and p.preprocess.image_size == 224


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.arch=no_such_net", "preprocess.mean=null"], "model.arch: 'no_such_net' is not"),
        (["model.arch=resnet10t.nope", "preprocess.std=null"], "model.arch: Invalid pretrained"),
        (["preprocess.channels=null", "preprocess.image_size=null"], "preprocess: mean needs 3"),
    ],
)
def test_bad_sources_are_named(project_root, overrides, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("[", r"\[")):
        _resolve(project_root, *overrides)


def test_a_folder_without_a_card_is_refused(project_root, tmp_path):
    with pytest.raises(ParamsError, match="folder without meta.json"):
        _resolve(project_root, f"pretrain.checkpoint={tmp_path}")


def test_resolved_params_hold_concrete_values_and_read_back_unchanged(project_root, tmp_path):
    p = _resolve(project_root, LITE0, *NULLS)
    text = resolved_text(p)
    assert None not in yaml.safe_load(text)["preprocess"].values()
    (tmp_path / "params.resolved.yaml").write_text(text)
    assert resolve_params(tmp_path / "params.resolved.yaml") == p
    assert p.digest() != _resolve(project_root, LITE0).digest()


def test_the_digits_default_resolves_without_timm_or_mlflow(project_root):
    code = (
        "import sys\nfrom pathlib import Path\nfrom tasks.core.params import resolve_params\n"
        f"p = resolve_params(Path({str(project_root / 'params.yaml')!r}))\n"
        "print(p.model.arch, p.preprocess.image_size, [m for m in ('timm', 'mlflow', 'torch') "
        "if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=project_root
    )
    assert done.stdout.split() == ["resnet10t", "32", "[]"]


def test_a_bad_source_stops_the_cli_with_one_line(tmp_path, project_root):
    project, empty = tmp_path / "project", tmp_path / "not-a-checkpoint"
    empty.mkdir()
    project.mkdir()
    (project / "params.yaml").write_text((project_root / "params.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "-C", str(project), "params"]
        + ["--set", f"pretrain.checkpoint={empty}", "--set", "preprocess.mean=null"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"pretrain.checkpoint: {empty} is a folder without meta.json" in done.stderr
    assert not (project / "params.resolved.yaml").exists()
