"""A prepared dataset on disk: ``shards/`` (the encoded images and their manifest columns,
``tasks.data.shards``), ``manifest.parquet`` (one row per image, saying which shard and row
holds it) and ``dataset.json`` (name, source, classes, skipped files, shard files); reading
and writing them.

Every stage after ``prepare`` reads datasets through these names, so the layout is declared
once. pandas loads when a manifest is read or written, not when the module is imported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from tasks.core.params import DatasetParams

MANIFEST = "manifest.parquet"
INFO = "dataset.json"
SPLITS = ("test", "val", "train", "unlabeled")
MANIFEST_COLUMNS = (
    "path",
    "label",
    "class_name",
    "split",
    "width",
    "height",
    "channels",
    "mode",
    "sha256",
    "mean",
    "std",
    "bytes",
)
# where each image is stored: the shard file (relative to the dataset folder) and its row there
SHARD_COLUMNS = ("shard", "row")

# PIL modes that hold grey pixels: decoded as "L" when a dataset is built, and counted as
# grey images (1 channel) in a dataset's ``image_channels``; every other mode is colour
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


class DataError(ValueError):
    """A dataset cannot be built or read; the message names the dataset and the problem."""


def relabel(labels: np.ndarray, names: tuple[str, ...], label_space: tuple[str, ...]):
    """Labels as indices into the configured label space; -1 for a class outside it."""
    index = {name: i for i, name in enumerate(label_space)}
    mapping = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    return mapping[labels]


def fresh_dir(out_dir: Path) -> None:
    """An empty dataset folder: files of an earlier build (an older layout's ``images/``
    folder too) must not linger in a new one, nor in what DVC versions."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def write_manifest(
    out_dir: Path,
    rows: list[tuple] | pd.DataFrame,
    info: dict,
    image_bytes: Callable[[int], bytes] | None = None,
) -> pd.DataFrame:
    """The manifest (``rows`` as tuples in ``MANIFEST_COLUMNS`` order, or a frame with those
    columns) and the info file. With ``image_bytes`` (row position -> encoded image, called one
    shard at a time) the images are written as shards first, and the manifest and the info
    file say where each one is (``SHARD_COLUMNS``, ``info["shards"]``)."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        manifest = rows.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)
    else:
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    if image_bytes is not None:
        from tasks.data.shards import write_shards

        manifest = write_shards(out_dir, manifest, image_bytes)
        info = {**info, "shards": shard_files(manifest)}
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    (out_dir / INFO).write_text(json.dumps(info, indent=2))
    return manifest


def shard_files(manifest: pd.DataFrame) -> list[dict]:
    """What ``dataset.json`` records of the shards: each file, its split and its image count."""
    counts = manifest.groupby(["shard", "split"], sort=True).size()
    return [{"file": f, "split": s, "images": int(n)} for (f, s), n in counts.items()]


def read_manifest(dataset_dir: Path) -> pd.DataFrame:
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (run the prepare stage first)")
    import pandas as pd

    return pd.read_parquet(path)


def image_channels(dataset_dir: Path) -> tuple[int, ...]:
    """The kinds of image a prepared dataset holds, as stored (its manifest's ``mode``):
    (1,) all grey, (3,) all colour (palette images included), (1, 3) a mix. What a model's
    card says about converting them (``tasks.data.preprocessing.conversion_note``)."""
    modes = read_manifest(dataset_dir)["mode"].unique()
    return tuple(sorted({1 if mode in GREY_MODES else 3 for mode in modes}))


def read_info(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / INFO).read_text())


def read_classes(dataset_dir: Path) -> tuple[str, ...]:
    return tuple(read_info(dataset_dir)["classes"])


def describe_spec(spec: DatasetParams) -> str:
    return f"builtin:{spec.builtin}" if spec.builtin is not None else f"path:{spec.path}"
