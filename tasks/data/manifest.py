"""A prepared dataset on disk: ``images/``, ``manifest.parquet`` (one row per image) and
``dataset.json`` (name, source, classes, skipped files); reading and writing them.

Every stage after ``prepare`` reads datasets through these names, so the layout is declared
once. pandas loads when a manifest is read or written, not when the module is imported.
"""

from __future__ import annotations

import json
import shutil
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
    """An empty dataset folder: files of an earlier build must not linger in a new one."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)


def write_manifest(out_dir: Path, rows: list[tuple], info: dict) -> pd.DataFrame:
    """The manifest (rows in ``MANIFEST_COLUMNS`` order) and the info file."""
    import pandas as pd

    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    (out_dir / INFO).write_text(json.dumps(info, indent=2))
    return manifest


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
