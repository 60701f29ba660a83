"""Augmented views for self-supervised pretraining, made on whole batches.

The images are small (8 to 64 px, grey or RGB) and already preprocessed into tensors, so a
view is a few batched tensor operations on the batch's device rather than a PIL pipeline
per image: a random resized crop with an optional horizontal flip (one ``affine_grid`` /
``grid_sample``), then brightness, contrast and (RGB) saturation jitter, random grey and
Gaussian blur on pixel values in [0, 1]. Every random number comes from the caller's CPU
generator, drawn in a fixed order, so the same generator state gives the same views on any
device. SimCLR's recipe (Chen et al. 2020, appendix A), sized by ``pretrain.ssl``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tasks.core.params import SelfSupervisedParams

ASPECT = (3 / 4, 4 / 3)  # the crop's aspect ratio range, as torchvision's RandomResizedCrop
BLUR_MIN_SIGMA = 0.1
BLUR_P = 0.5
# ITU-R 601 luma, as torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low, high, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def _crop_grids(batch: torch.Tensor, ssl: SelfSupervisedParams, gen: torch.Generator):
    """A sampling grid per image: a crop of area ``ssl.crop_scale`` and aspect ratio in
    ``ASPECT``, anywhere inside the image, resized back to the full size (and mirrored).

    The ratio is drawn within what the area allows (a crop never leaves the image), so
    ``crop_scale`` [1, 1] is the whole image, not a squeezed one."""
    n = len(batch)
    area = _uniform(n, *ssl.crop_scale, gen)
    low = torch.maximum(area.log(), torch.tensor(math.log(ASPECT[0]), dtype=torch.float64))
    high = torch.minimum(-area.log(), torch.tensor(math.log(ASPECT[1]), dtype=torch.float64))
    ratio = torch.exp(low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64))
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    # the crop's centre in grid_sample's [-1, 1] coordinates
    cx = (1 - w) * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1)
    cy = (1 - h) * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1)
    sign = torch.ones(n, dtype=torch.float64)
    if ssl.flip:
        sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=batch.device, dtype=batch.dtype)
    return F.affine_grid(theta, list(batch.shape), align_corners=False)


def _grey(pixels: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] luma of RGB pixels (grey pixels are their own luma)."""
    if pixels.shape[1] == 1:
        return pixels
    weights = torch.tensor(LUMA, dtype=pixels.dtype, device=pixels.device)
    return (pixels * weights[None, :, None, None]).sum(1, keepdim=True)


def _factors(n: int, strength: float, gen: torch.Generator, like: torch.Tensor):
    """Per-image factors in [max(0, 1 - s), 1 + s], shaped to broadcast over [N, C, H, W]."""
    f = _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, gen)
    return f.to(device=like.device, dtype=like.dtype)[:, None, None, None]


def _jitter(pixels: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and (RGB) saturation, each a blend as torchvision's ColorJitter."""
    n = len(pixels)
    pixels = (pixels * _factors(n, strength, gen, pixels)).clamp(0, 1)
    mean = _grey(pixels).mean(dim=(1, 2, 3), keepdim=True)
    c = _factors(n, strength, gen, pixels)
    pixels = (c * pixels + (1 - c) * mean).clamp(0, 1)
    if pixels.shape[1] == 3:
        s = _factors(n, strength, gen, pixels)
        pixels = (s * pixels + (1 - s) * _grey(pixels)).clamp(0, 1)
    return pixels


def _random_grey(pixels: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    chosen = (torch.rand(len(pixels), generator=gen) < p).to(pixels.device)
    return torch.where(chosen[:, None, None, None], _grey(pixels).expand_as(pixels), pixels)


def _blur(pixels: torch.Tensor, sigma_max: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur of about half the images, sigma uniform in (0.1, sigma_max]: one
    separable depthwise convolution with a kernel per image (reflected borders)."""
    n, c, h, w = pixels.shape
    sigma = _uniform(n, min(BLUR_MIN_SIGMA, sigma_max), sigma_max, gen)
    chosen = (torch.rand(n, generator=gen) < BLUR_P).to(pixels.device)
    radius = math.ceil(3 * sigma_max)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(pixels.device, pixels.dtype)
    kernel = kernel.repeat_interleave(c, dim=0)  # one per (image, channel)
    flat = pixels.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return torch.where(chosen[:, None, None, None], flat.reshape(n, c, h, w), pixels)


def _acts_on_pixels(ssl: SelfSupervisedParams, channels: int) -> bool:
    return ssl.jitter > 0 or ssl.blur_sigma > 0 or (channels == 3 and ssl.grayscale > 0)


def make_views(
    batch: torch.Tensor,
    ssl: SelfSupervisedParams,
    gen: torch.Generator,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """One random view of each image of a normalised [N, C, H, W] batch, normalised alike.

    Jitter, grey and blur act on pixel values, so the batch is un-normalised with
    ``mean``/``std`` first, clamped to [0, 1] and normalised again after."""
    if len(batch) == 0:
        return batch
    views = F.grid_sample(
        batch,
        _crop_grids(batch, ssl, gen),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    channels = batch.shape[1]
    if not _acts_on_pixels(ssl, channels):
        return views
    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device)[None, :, None, None]
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device)[None, :, None, None]
    pixels = (views * s + m).clamp(0, 1)
    if ssl.jitter > 0:
        pixels = _jitter(pixels, ssl.jitter, gen)
    if channels == 3 and ssl.grayscale > 0:
        pixels = _random_grey(pixels, ssl.grayscale, gen)
    if ssl.blur_sigma > 0:
        pixels = _blur(pixels, ssl.blur_sigma, gen)
    return (pixels.clamp(0, 1) - m) / s


def two_views(
    batch: torch.Tensor,
    ssl: SelfSupervisedParams,
    gen: torch.Generator,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of each image: the positive pair of SimCLR and BYOL."""
    return make_views(batch, ssl, gen, mean, std), make_views(batch, ssl, gen, mean, std)
