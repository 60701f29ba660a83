"""A user's ImageFolder directory (``<root>/<class>/<image>``) as a prepared dataset: images
inspected, bad files named (or skipped when ``skip_bad_files``), splits drawn, and the files'
original bytes written into shards (never re-encoded: decoding them gives the pixels the
user's files give), read one row group (1,024 images) at a time."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.data.manifest import DataError, fresh_dir, relabel, write_manifest
from tasks.data.splits import assign_splits, storage_order, subsample

if TYPE_CHECKING:
    import pandas as pd

    from tasks.core.params import DatasetParams


def resolve_dir(path: str, base_dir: Path | None) -> Path:
    """``path`` as given, or relative to ``base_dir`` (the project) when it is relative."""
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


def _inspect(root: Path, spec: DatasetParams, role: str, max_pixels: int):
    """Scan and inspect every image: (scan, infos and files of the usable ones, bad files)."""
    from tasks.data.ingest import (
        BadFile,
        IngestError,
        describe_error,
        inspect_image,
        scan_image_folder,
    )

    try:
        scan = scan_image_folder(root, spec.unlabeled)
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
    return scan, infos, kept, bad


def ingest_folder(
    root: Path, spec: DatasetParams, split_seed: int, out_dir: Path, role: str, max_pixels: int
) -> pd.DataFrame:
    """The ImageFolder ``root`` (``spec.path`` resolved) -> shards of its files, manifest and
    info; bad files named, or skipped with ``spec.skip_bad_files``. Nothing is written before
    every file has been checked. The manifest's ``path`` stays the file's name in the folder
    (``images/<class>/...``), which is what validation messages name."""
    scan, infos, kept, bad = _inspect(root, spec, role, max_pixels)
    label_space = spec.classes or scan.classes
    found = tuple(sorted({name for _, name in kept}))
    raw_labels = np.array([found.index(name) for _, name in kept], dtype=np.int64)
    labels = relabel(raw_labels, found, label_space)
    index = subsample(raw_labels, spec.limit, split_seed)
    splits = assign_splits(raw_labels[index], spec, split_seed, f"{role} ({root})", found)
    index, splits = storage_order(index, splits, split_seed)
    rows, files = [], []
    for i, split in zip(index, splits, strict=True):
        (rel, name), info = kept[i], infos[i]
        files.append(root / rel)
        rows.append(
            (f"images/{rel}", int(labels[i]), name, split, info.width, info.height)
            + (info.channels, info.mode, info.sha256, info.mean, info.std, info.bytes)
        )
    payload = {
        "name": root.name,
        "source": {"path": str(root), "fingerprint": folder_fingerprint(root)},
        "classes": list(label_space),
        "skipped": [{"path": b.path, "problem": b.problem} for b in bad],
    }
    fresh_dir(out_dir)
    sizes = [row[-1] for row in rows]
    return write_manifest(out_dir, rows, payload, _file_reader(root, files, sizes, role))


def _file_reader(root: Path, files: list[Path], sizes: list[int], role: str):
    """``image_bytes`` for ``write_shards``: file ``i``'s bytes as they were inspected; a file
    changed or removed since (its size differs) is named rather than stored unchecked."""

    def read(i: int) -> bytes:
        rel = files[i].relative_to(root).as_posix()
        try:
            data = files[i].read_bytes()
        except OSError as exc:
            raise DataError(f"data.{role}.path: {root}: {rel!r}: unreadable ({exc})") from None
        if len(data) != sizes[i]:
            raise DataError(
                f"data.{role}.path: {root}: {rel!r}: changed while it was being prepared "
                "(run prepare again)"
            )
        return data

    return read
