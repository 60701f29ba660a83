"""Batches of preprocessed image tensors: the epoch's index batches, augmentation, and
batched inference (logits, features, accuracy) in eval mode with results on the CPU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.core.params import TrainParams


def random_shift(batch: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (edge padding), vectorised."""
    if max_shift <= 0:
        return batch
    n, _, h, w = batch.shape
    padded = F.pad(batch, (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(batch.shape[1])[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


def steps_per_epoch(cfg: TrainParams, images: int) -> int:
    """One pass over the images, or more steps when ``cfg.epochs`` passes would be fewer than
    ``cfg.min_steps``: with one label per class a pass is a single step."""
    return max(math.ceil(images / cfg.batch_size), math.ceil(cfg.min_steps / cfg.epochs))


def epoch_batches(images: int, steps: int, batch_size: int, gen: torch.Generator, order=None):
    """Index batches of one epoch: a seeded permutation cut into ``batch_size`` slices, and
    further permutations after it when the epoch takes more steps than one pass gives.

    ``order(gen)``, when given, makes each pass's permutation instead: a streamed dataset's
    own ``epoch_order`` (``tasks.data.streaming``), which shuffles within windows of shard
    row groups so that an epoch reads each row group about once."""
    size = min(batch_size, images)
    one_pass = math.ceil(images / size)
    passes = 1 if steps <= one_pass else math.ceil(steps * size / images)
    permute = order or (lambda g: torch.randperm(images, generator=g))
    order = torch.cat([permute(gen) for _ in range(passes)])
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm model's pooled pre-logit features: what transfer keeps of a backbone, what
    the self-supervised heads and the kNN monitor see (a headless model has no logits)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def features_and_logits(model: torch.nn.Module, x: torch.Tensor):
    """Pooled pre-logit features and logits of a timm model in one forward pass."""
    pooled = pooled_features(model, x)
    return pooled, model.get_classifier()(pooled)


@torch.no_grad()
def map_batches(
    model: torch.nn.Module, fn, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """``fn(model, batch)`` over ``inputs`` in eval mode, batched, results back on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = [
        fn(model, inputs[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def predict_logits(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    return map_batches(model, lambda m, x: m(x), inputs, batch_size)


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return math.nan
    return (predict_logits(model, inputs).argmax(1) == labels).float().mean().item()
