"""Reading a prepared split back: decoded images, preprocessed tensors, or a stream from the
split's shards (``tasks.data.streaming``) so a source of any size trains with flat memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.data.manifest import read_classes, read_manifest


@dataclass(frozen=True)
class Split:
    """One split of a materialised dataset, ready for training or evaluation.

    ``names``: each image's manifest ``path`` (its original relative name), for messages and
    for finding it again with ``tasks.data.shards.export_images``; the images themselves live
    in the dataset's shards, not in files of these names."""

    images: list[np.ndarray]
    labels: np.ndarray
    names: list[str]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def load_split(dataset_dir: Path, split: str, channels: int) -> Split:
    """Decode the images of one split (``train``, ``val``, ``test`` or ``unlabeled``) from the
    dataset's shards; an image that does not decode is named by its dataset and original path."""
    manifest = read_manifest(dataset_dir)
    rows = manifest[manifest["split"] == split]
    names = [str(p) for p in rows["path"]]
    images = decode_rows(dataset_dir, rows, channels)
    return Split(images, rows["label"].to_numpy(np.int64), names, read_classes(dataset_dir))


def decode_rows(dataset_dir: Path, rows, channels: int) -> list[np.ndarray]:
    """The decoded images of manifest ``rows`` (any subset, any order), read from the shards."""
    from tasks.data.preprocessing import decode_image
    from tasks.data.shards import read_image_bytes

    blobs = read_image_bytes(dataset_dir, rows)
    return [
        decode_image(data, channels, f"{dataset_dir}: {name}")
        for data, name in zip(blobs, rows["path"], strict=True)
    ]


def load_tensors(
    dataset_dir: Path, split: str, cfg, degrade_to: int | None = None, fit_frame: bool = False
):
    """One split as (preprocessed NCHW inputs, labels tensor, class names)."""
    import torch

    from tasks.data.preprocessing import preprocess

    data = load_split(dataset_dir, split, cfg.channels)
    inputs = preprocess(data.images, cfg, degrade_to=degrade_to, fit_frame=fit_frame)
    return inputs, torch.from_numpy(data.labels.copy()), data.classes


def load_source_tensors(
    dataset_dir: Path,
    split: str,
    params,
    stream: bool = False,
    cache_dir: Path | None = None,
):
    """A source split with the source-only preprocessing that matches it to the target
    (``pretrain.source_fit_frame`` and ``pretrain.source_resolution``); ``stream``: the
    inputs are streamed from the shards (``stream_tensors``), decoded once into the
    decoded cache under ``cache_dir`` when it fits ``storage.decoded_cache_mb``."""
    args = (
        dataset_dir,
        split,
        params.preprocess,
        params.pretrain.source_resolution,
        params.pretrain.source_fit_frame,
    )
    if not stream:
        return load_tensors(*args)
    return stream_tensors(*args, cache_dir=cache_dir, cache_mb=params.storage.decoded_cache_mb)


def stream_tensors(
    dataset_dir: Path,
    split: str,
    cfg,
    degrade_to: int | None = None,
    fit_frame: bool = False,
    *,
    cache_dir: Path | None = None,
    cache_mb: int = 0,
):
    """Like ``load_tensors``, but the inputs are ``tasks.data.streaming.ShardImages``:
    streamed from the split's shards, decoded per batch (or read from the decoded cache)."""
    from tasks.data.streaming import ShardImages

    images = ShardImages(
        dataset_dir, split, cfg, degrade_to, fit_frame, cache_dir=cache_dir, cache_mb=cache_mb
    )
    return images, images.labels, read_classes(dataset_dir)
