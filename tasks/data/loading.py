"""Reading a prepared split back: decoded images, preprocessed tensors, or ``ImageFiles``
that decode per batch so a source of any size streams from disk."""

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


def load_source_tensors(dataset_dir: Path, split: str, params, stream: bool = False):
    """A source split with the source-only preprocessing that matches it to the target
    (``pretrain.source_fit_frame`` and ``pretrain.source_resolution``); ``stream``: the
    inputs are decoded per batch from disk (``stream_tensors``)."""
    load = stream_tensors if stream else load_tensors
    return load(
        dataset_dir,
        split,
        params.preprocess,
        params.pretrain.source_resolution,
        params.pretrain.source_fit_frame,
    )


class ImageFiles:
    """A split's images, decoded from their files and preprocessed only when indexed.

    ``files[idx]`` (a tensor or list of indices, or a slice) gives exactly the rows of
    ``load_tensors(...)[0][idx]`` without holding the split in memory, so the training loop
    streams a source of any size from disk, batch by batch, with the same results. It is a
    map-style dataset (``len`` and indexing), so a torch ``DataLoader`` can read it too.
    """

    def __init__(
        self, paths: list[Path], cfg, degrade_to: int | None = None, fit_frame: bool = False
    ):
        self.paths, self.cfg = list(paths), cfg
        self.degrade_to, self.fit_frame = degrade_to, fit_frame

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self._load([self.paths[idx]])[0]
        if isinstance(idx, slice):
            chosen = self.paths[idx]
        else:
            chosen = [self.paths[i] for i in np.asarray(idx).reshape(-1).tolist()]
        return self._load(chosen)

    def _load(self, paths: list[Path]):
        from tasks.data.preprocessing import preprocess

        return preprocess(paths, self.cfg, degrade_to=self.degrade_to, fit_frame=self.fit_frame)


def stream_tensors(
    dataset_dir: Path, split: str, cfg, degrade_to: int | None = None, fit_frame: bool = False
):
    """Like ``load_tensors``, but the inputs are ``ImageFiles``: decoded per batch from disk."""
    import torch

    manifest = read_manifest(dataset_dir)
    rows = manifest[manifest["split"] == split]
    files = ImageFiles([dataset_dir / p for p in rows["path"]], cfg, degrade_to, fit_frame)
    labels = torch.from_numpy(rows["label"].to_numpy(np.int64).copy())
    return files, labels, read_classes(dataset_dir)
