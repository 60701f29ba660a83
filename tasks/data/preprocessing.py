"""Raw image -> model input. One function, used by training, evaluation and the served model,
so the registered model applies exactly the preprocessing it was trained with.

Channels are converted on purpose, to what the model takes (``preprocess.channels``): a grey
image given to an RGB model is repeated into 3 identical channels (the way a grey photo
looks to an ImageNet backbone), and a colour image given to a grey model becomes its luma
(ITU-R 601: 0.299 R + 0.587 G + 0.114 B, what PIL's ``convert("L")`` computes). An alpha
channel is dropped. The conversion comes before resizing, so every interpolation mode sees
the channels the model will. A model's card says which conversion its data needed
(``conversion_note``), and the registered version's description says what it takes
(``describe_input``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tasks.core.params import PreprocessParams

Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs instead of exhausting memory

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 HxW (grey) or HxWx3; palette and RGBA are converted.

    A file that cannot be decoded raises one ValueError naming the file and the reason.
    """
    return _decode(path, channels, str(path))


def decode_image(data: bytes, channels: int, name: str) -> np.ndarray:
    """``read_image`` for an encoded image held in memory (a prepared dataset's shard row):
    the same conversions, and the same one ValueError, naming ``name`` (where it came from)."""
    import io

    return _decode(io.BytesIO(data), channels, name)


def _decode(source, channels: int, name: str) -> np.ndarray:
    try:
        with Image.open(source) as img:
            return np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: cannot read image ({exc})") from None


def _to_float_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    arr = torch.tensor(np.asarray(image))  # a copy: decoded arrays may be read-only
    if arr.dtype == torch.uint8:
        arr = arr.float() / 255.0
    elif arr.is_floating_point() or arr.dtype == torch.bool:
        arr = arr.float()
        if arr.numel() and (arr.min() < 0 or arr.max() > 1):
            raise ValueError("float images must be in [0, 1]; pass uint8 for 0-255 values")
    else:
        raise ValueError(f"expected uint8 (0-255) or float (0-1) images, got {arr.dtype}")
    if arr.ndim == 2:
        return arr.unsqueeze(0)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        return arr[..., :3].permute(2, 0, 1)  # HWC -> CHW, alpha dropped
    raise ValueError(f"expected an HxW or HxWxC image, got shape {tuple(arr.shape)}")


def _match_channels(chw: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey repeated into 3 channels, or colour to luma (see the module docstring)."""
    if chw.shape[0] == channels:
        return chw
    if channels == 1:
        return (chw * _LUMA[:, None, None]).sum(0, keepdim=True)
    return chw.expand(3, -1, -1)


def conversion_note(data_channels: Iterable[int], channels: int) -> str | None:
    """What happens to a dataset's images (``data_channels``: the kinds it holds, 1 grey and
    3 colour) on their way into a model taking ``channels``; None when they already match."""
    other = set(data_channels) - {channels}
    if not other:
        return None
    some = "some of the images are" if len(set(data_channels)) > 1 else "the images are"
    if channels == 3:
        return (
            f"{some} grey: they are repeated into 3 channels, as the model takes RGB "
            "(preprocess.channels: 3)"
        )
    return (
        f"{some} in colour: they are converted to grey (luma: 0.299 R + 0.587 G + 0.114 B), "
        "as the model takes 1 channel (preprocess.channels: 1)"
    )


def describe_input(cfg: PreprocessParams) -> str:
    """One sentence of what ``preprocess`` does to an image, for people reading a model."""
    kind = "RGB; grey images are repeated into 3 channels"
    if cfg.channels == 1:
        kind = "grey; colour images are converted to their luma"
    return (
        f"{cfg.image_size}x{cfg.image_size} pixels ({cfg.interpolation} resizing), "
        f"{cfg.channels} channel(s) ({kind}), normalised with mean {list(cfg.mean)} "
        f"and std {list(cfg.std)}"
    )


def _resize(batch: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize to ``size`` x ``size``; bilinear and bicubic are antialiased (as PIL is)."""
    if batch.shape[-2:] == (size, size):
        return batch
    if mode == "nearest":
        return F.interpolate(batch, size=(size, size), mode="nearest-exact")
    out = F.interpolate(batch, size=(size, size), mode=mode, antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out  # bicubic overshoots


def fit_to_frame(chw: torch.Tensor, size: int, threshold: float = 0.2) -> torch.Tensor:
    """Crop to the foreground's bounding box and scale it to fill ``size`` x ``size`` in height.

    The foreground is every pixel further than ``threshold`` from the border's median (its
    background). The width keeps the aspect ratio, centred, squeezed only if it would not fit.
    This is the size normalisation the NIST/UCI digits were made with, so a small digit in a
    wide margin (MNIST) looks like one that fills its frame (uci-digits). An image without
    foreground is only resized.
    """
    border = torch.cat([chw[:, 0], chw[:, -1], chw[:, :, 0], chw[:, :, -1]], dim=1)
    background = border.median(dim=1).values
    ink = ((chw - background[:, None, None]).abs() > threshold).any(0)
    rows, cols = ink.any(1).nonzero(), ink.any(0).nonzero()
    if len(rows) == 0:
        return _resize(chw.unsqueeze(0), size)[0]
    crop = chw[:, rows[0, 0] : rows[-1, 0] + 1, cols[0, 0] : cols[-1, 0] + 1]
    height, width = crop.shape[1:]
    new_width = max(1, min(size, round(width * size / height)))
    scaled = F.interpolate(
        crop.unsqueeze(0), size=(size, new_width), mode="bilinear", antialias=True
    )[0]
    out = background[:, None, None].expand(-1, size, size).clone()
    left = (size - new_width) // 2
    out[:, :, left : left + new_width] = scaled
    return out


def preprocess(
    images: Sequence[np.ndarray | str | Path] | np.ndarray,
    cfg: PreprocessParams,
    degrade_to: int | None = None,
    fit_frame: bool = False,
) -> torch.Tensor:
    """Images (uint8 arrays, float arrays in [0, 1], or file paths) -> normalised NCHW float32.

    ``cfg`` must be complete (params resolution fills nulls from the source model).

    ``fit_frame`` first crops each image to its foreground (``fit_to_frame``), and
    ``degrade_to`` then resizes to that resolution: both make a source look like its target
    (a sharp, small-in-frame MNIST digit like a low-resolution, frame-filling UCI digit),
    which is part of what makes transfer work. Only the source uses them.
    """
    if not cfg.complete:
        raise ValueError(f"preprocess has unresolved (null) values: {cfg.model_dump()}")
    items = [read_image(x, cfg.channels) if isinstance(x, (str, Path)) else x for x in images]
    tensors = [_match_channels(_to_float_chw(x), cfg.channels) for x in items]
    if fit_frame:
        size = degrade_to or cfg.image_size
        tensors = [fit_to_frame(t, size) for t in tensors]
    if not tensors:
        return torch.empty(0, cfg.channels, cfg.image_size, cfg.image_size)
    same_size = all(t.shape == tensors[0].shape for t in tensors)
    groups = [torch.stack(tensors)] if same_size else [t.unsqueeze(0) for t in tensors]
    out = []
    for batch in groups:
        if degrade_to is not None:
            batch = _resize(batch, degrade_to)
        out.append(_resize(batch, cfg.image_size, cfg.interpolation))
    batch = torch.cat(out)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return ((batch - mean) / std).contiguous()
