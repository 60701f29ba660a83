"""Building one prepared dataset from its params: a built-in recipe encoded as PNG, or a
user's ImageFolder ingested with its files' original bytes; either way subsampled, split,
written as shards (``tasks.data.shards``) and described by a manifest.

The parts live next door: ``builtins`` (recipes), ``splits``, ``folders`` (ImageFolder
ingest), ``manifest`` (the files on disk) and ``loading`` (reading a split back).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.data.builtins import RawDataset, load_builtin
from tasks.data.folders import ingest_folder, resolve_dir
from tasks.data.ingest import pixel_sha256
from tasks.data.manifest import fresh_dir, relabel, write_manifest
from tasks.data.splits import assign_splits, storage_order, subsample

if TYPE_CHECKING:
    import pandas as pd

    from tasks.core.params import DatasetParams


def materialize(
    raw: RawDataset,
    splits: np.ndarray,
    index: np.ndarray,
    out_dir: Path,
    label_space: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Encode the chosen images as PNG in memory and write them as shards under ``out_dir``,
    plus the manifest and info file. A built-in's images share one shape, so their
    statistics are computed for all of them at once; only encoding and hashing are per image."""
    import pandas as pd

    label_space = label_space or raw.classes
    labels = relabel(raw.labels, raw.classes, label_space)
    images = raw.images[index]
    mode = "L" if images.ndim == 3 else "RGB"
    channels = 1 if images.ndim == 3 else images.shape[3]
    encoded = [encode_png(image) for image in images]
    means, stds = batch_intensity_stats(images)
    names = np.asarray(raw.classes, dtype=object)[raw.labels[index]]
    manifest = pd.DataFrame(
        {
            "path": [f"images/{name}/{i:05d}.png" for name, i in zip(names, index, strict=True)],
            "label": labels[index].astype(np.int64),
            "class_name": names,
            "split": np.asarray(splits, dtype=object),
            "width": images.shape[2],
            "height": images.shape[1],
            "channels": channels,
            "mode": mode,
            "sha256": [pixel_sha256(image, mode) for image in images],
            "mean": means,
            "std": stds,
            "bytes": [len(data) for data in encoded],
        }
    )
    info = {"name": raw.name, "source": {"builtin": raw.name}, "classes": list(label_space)}
    fresh_dir(out_dir)
    return write_manifest(out_dir, manifest, {**info, "skipped": []}, encoded.__getitem__)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image; the same pixels always give the same bytes (no
    timestamps, fixed settings), so a rebuilt dataset is byte-identical. Level 1: a built-in
    is small and compresses little better at higher levels, for several times the time."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def batch_intensity_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``intensity_stats`` of each of N same-shaped images in one pass (the same float32
    arithmetic per image, so the same values)."""
    values = images.reshape(len(images), -1).astype(np.float32)
    return values.mean(axis=1).astype(np.float64), values.std(axis=1).astype(np.float64)


def prepare_dataset(
    spec: DatasetParams,
    split_seed: int,
    out_dir: Path,
    role: str = "dataset",
    max_pixels: int = 16_000_000,
    base_dir: Path | None = None,
) -> pd.DataFrame:
    """Build one dataset directory from its params: recipe or folder, subsample, splits, files."""
    if spec.path is not None:
        root = resolve_dir(spec.path, base_dir)
        return ingest_folder(root, spec, split_seed, out_dir, role, max_pixels)
    raw = load_builtin(spec.builtin)
    index = subsample(raw.labels, spec.limit, split_seed)
    splits = assign_splits(raw.labels[index], spec, split_seed, raw.name, raw.classes)
    index, splits = storage_order(index, splits, split_seed)
    return materialize(raw, splits, index, out_dir, spec.classes)
