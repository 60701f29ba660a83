"""timm models and their checkpoints: safetensors weights plus a JSON card to rebuild them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from tasks.core.params import PreprocessParams

WEIGHTS = "model.safetensors"
CARD = "meta.json"


class ModelCard(BaseModel):
    """Everything needed to rebuild a checkpoint and feed it raw images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    classes: tuple[str, ...]
    preprocess: PreprocessParams
    strategy: str | None = None
    # how the training images were converted to preprocess.channels (grey repeated into
    # RGB, colour to luma), or None when they already had those channels; cards written
    # before it existed say None (tasks.data.preprocessing.conversion_note)
    input_conversion: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_cards(cls, card):
        """Cards written before ``preprocess.interpolation`` existed resized bilinearly."""
        if isinstance(card, dict) and isinstance(card.get("preprocess"), dict):
            card = {**card, "preprocess": {"interpolation": "bilinear", **card["preprocess"]}}
        return card

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def create_model(
    arch: str, num_classes: int, in_chans: int, seed: int | None = None
) -> torch.nn.Module:
    """A randomly initialised timm model (no hub download: pretrained weights come from files).

    ``seed`` fixes the initial weights, so a rerun in a fresh process builds the same model.
    """
    import timm

    if seed is not None:
        torch.manual_seed(seed)
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise ValueError(f"model.arch: {exc}") from None


def stage_modules(model: torch.nn.Module) -> list[list[str]]:
    """Module names per coarse layer group (stem first), from the model's timm group_matcher."""
    from timm.models import group_modules

    groups = group_modules(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def freeze_stages(model: torch.nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` layer groups with timm (BatchNorm becomes FrozenBatchNorm2d)."""
    from timm.utils import freeze

    groups = stage_modules(model)
    if n >= len(groups):
        raise ValueError(f"transfer.freeze_stages: {n} would freeze all {len(groups)} groups")
    names = [name for group in groups[:n] for name in group]
    freeze(model, names)
    return names


def unfreeze_modules(model: torch.nn.Module, names: list[str]) -> None:
    """Undo ``freeze_stages`` so the checkpoint has plain BatchNorm layers again."""
    from timm.utils import unfreeze

    if names:
        unfreeze(model, names)


class NonFiniteWeights(ValueError):
    """A model or a weights file holds NaN or infinite values: never saved, never loaded."""


def first_non_finite(tensors) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` (name -> tensor pairs)
    holding a NaN or an infinity, or None. One pass, one tensor at a time."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse a model whose weights are not all finite; ``what`` names it in the message."""
    bad = first_non_finite(model.state_dict().items())
    if bad is not None:
        raise NonFiniteWeights(f"{what}: tensor {bad} holds NaN or infinite values")


def save_checkpoint(model: torch.nn.Module, card: ModelCard, out_dir: Path) -> Path:
    """Write weights and card; a model with non-finite weights is refused, not saved."""
    from safetensors.torch import save_model

    check_finite(model, f"{out_dir}: not saved")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out_dir / WEIGHTS))
    (out_dir / CARD).write_text(card.model_dump_json(indent=2) + "\n")
    return out_dir


def read_card(ckpt_dir: Path) -> ModelCard:
    path = ckpt_dir / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint card not found")
    return ModelCard.model_validate(json.loads(path.read_text()))


def load_checkpoint(ckpt_dir: Path) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model from its card and load the safetensors weights (no pickle)."""
    from safetensors.torch import load_model

    card = read_card(ckpt_dir)
    model = create_model(card.arch, card.num_classes, card.preprocess.channels)
    load_model(model, str(ckpt_dir / WEIGHTS))
    check_finite(model, str(ckpt_dir / WEIGHTS))
    return model.eval(), card


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("base.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)
