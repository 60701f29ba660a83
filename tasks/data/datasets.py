"""Building one prepared dataset from its params: a built-in recipe written out as PNG files,
or a user's ImageFolder copied in; either way subsampled, split, and described by a manifest.

The parts live next door: ``builtins`` (recipes), ``splits``, ``folders`` (ImageFolder
ingest), ``manifest`` (the files on disk) and ``loading`` (reading a split back).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.data.builtins import RawDataset, load_builtin
from tasks.data.folders import ingest_folder, resolve_dir
from tasks.data.manifest import fresh_dir, relabel, write_manifest
from tasks.data.splits import assign_splits, subsample

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
    """Write images as PNG under ``out_dir/images/<class>/`` plus the manifest and info file."""
    from tasks.data.ingest import intensity_stats, pixel_sha256

    label_space = label_space or raw.classes
    labels = relabel(raw.labels, raw.classes, label_space)
    fresh_dir(out_dir)
    for name in raw.classes:
        (out_dir / "images" / name).mkdir(parents=True)
    rows = []
    for i, split in zip(index, splits, strict=True):
        image, name = raw.images[i], raw.classes[int(raw.labels[i])]
        rel = f"images/{name}/{i:05d}.png"
        Image.fromarray(image).save(out_dir / rel, optimize=False, compress_level=1)
        mode = "L" if image.ndim == 2 else "RGB"
        mean, std = intensity_stats(image)
        channels = 1 if image.ndim == 2 else image.shape[2]
        rows.append(
            (rel, int(labels[i]), name, split, image.shape[1], image.shape[0], channels, mode)
            + (pixel_sha256(image, mode), mean, std, (out_dir / rel).stat().st_size)
        )
    info = {"name": raw.name, "source": {"builtin": raw.name}, "classes": list(label_space)}
    return write_manifest(out_dir, rows, {**info, "skipped": []})


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
        manifest = ingest_folder(root, spec, split_seed, out_dir, role, max_pixels)
    else:
        raw = load_builtin(spec.builtin)
        index = subsample(raw.labels, spec.limit, split_seed)
        splits = assign_splits(raw.labels[index], spec, split_seed, raw.name, raw.classes)
        manifest = materialize(raw, splits, index, out_dir, spec.classes)
    # TEMPORARY SHIM (dropped at merge): the PREP slice makes prepare write shards instead of
    # images/; until then the shards are written from the PNG files, which stay for the other
    # readers of this branch.
    from tasks.data.manifest import MANIFEST
    from tasks.data.shards import write_shards

    manifest = write_shards(out_dir, manifest, lambda i: (out_dir / manifest.path[i]).read_bytes())
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    return manifest
