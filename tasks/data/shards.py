"""A prepared dataset's images as a bounded number of Parquet shards, and reading them back.

Why Parquet: the manifest is Parquet already, pyarrow is already in the stack, and one file
holds both the encoded image bytes and the manifest columns, so metadata is read without
touching the images (a column projection) and a row group is the unit a loader streams,
shuffles and hands to a DDP rank or a worker. A dataset of any size is a few dozen files,
so DVC hashes, caches and pushes a handful of objects instead of one per image, and an S3
remote is paid per shard, not per image.

Layout inside a prepared dataset folder (``data/source``, ``data/target``)::

    shards/<split>-<k:03d>.parquet   MANIFEST_COLUMNS + ``image`` (the encoded bytes, as they
                                     were: a user's JPEG stays that JPEG; built-ins are PNG)
    manifest.parquet                 the same metadata columns + ``shard`` (file name relative
                                     to the dataset folder) and ``row`` (row within it)

Rows of a split are written in manifest order, so concatenating a split's shards in file
order gives exactly the manifest's rows of that split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

SHARD_DIR = "shards"
IMAGE_COLUMN = "image"
SHARD_TARGET_BYTES = 128 * 1024**2  # encoded bytes per shard before a split gets another one
MAX_SHARDS_PER_SPLIT = 8  # a dataset stays at most 4 x 8 = 32 shard files whatever its size
ROW_GROUP_ROWS = 1024  # the streaming unit: what a loader reads, shuffles and shares out


@dataclass(frozen=True)
class RowGroup:
    """One streaming unit: row group ``index`` of ``shard`` holding ``rows`` images, the
    first of which is row ``first_row`` of the split (in manifest order)."""

    shard: Path
    index: int
    first_row: int
    rows: int


def shard_name(split: str, k: int) -> str:
    return f"{SHARD_DIR}/{split}-{k:03d}.parquet"


def shard_count(total_bytes: int) -> int:
    """Shards for one split: one per ``SHARD_TARGET_BYTES``, at most ``MAX_SHARDS_PER_SPLIT``."""
    return max(1, min(MAX_SHARDS_PER_SPLIT, math.ceil(total_bytes / SHARD_TARGET_BYTES)))


def write_shards(
    out_dir: Path, manifest: pd.DataFrame, image_bytes: Callable[[int], bytes]
) -> pd.DataFrame:
    """Write ``manifest``'s images into shards under ``out_dir``; return the manifest with
    ``shard`` and ``row`` columns added (same row order).

    ``image_bytes(i)`` gives the encoded image of manifest row ``i`` (positional); it is
    called one row group at a time, so memory holds one row group's bytes, not the dataset's.
    """

    manifest = manifest.reset_index(drop=True).copy()
    (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    shard_col = [""] * len(manifest)
    row_col = [0] * len(manifest)
    for split in sorted(manifest["split"].unique()):
        positions = manifest.index[manifest["split"] == split].to_list()
        count = shard_count(int(manifest.loc[positions, "bytes"].sum()))
        per_shard = math.ceil(len(positions) / count)
        for k in range(count):
            chosen = positions[k * per_shard : (k + 1) * per_shard]
            if not chosen:
                continue
            name = shard_name(split, k)
            _write_shard(out_dir / name, manifest, chosen, image_bytes)
            for row, i in enumerate(chosen):
                shard_col[i], row_col[i] = name, row
    manifest["shard"] = shard_col
    manifest["row"] = row_col
    return manifest


def _write_shard(
    path: Path, manifest: pd.DataFrame, rows: list[int], image_bytes: Callable[[int], bytes]
) -> None:
    """One shard, written row group by row group: memory holds one row group's images (a
    shard of large photos would not fit in memory at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for start in range(0, len(rows), ROW_GROUP_ROWS):
            chosen = rows[start : start + ROW_GROUP_ROWS]
            table = pa.Table.from_pandas(manifest.loc[chosen], preserve_index=False)
            images = pa.array([image_bytes(i) for i in chosen], type=pa.binary())
            table = table.append_column(IMAGE_COLUMN, images)
            if writer is None:
                compression = {
                    c: "NONE" if c == IMAGE_COLUMN else "SNAPPY" for c in table.column_names
                }
                writer = pq.ParquetWriter(path, table.schema, compression=compression)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    finally:
        if writer is not None:
            writer.close()


def split_shards(dataset_dir: Path, split: str) -> list[Path]:
    """The shard files of one split, in order."""
    return sorted((dataset_dir / SHARD_DIR).glob(f"{split}-*.parquet"))


def row_groups(dataset_dir: Path, split: str) -> list[RowGroup]:
    """A split's streaming units in manifest order (read from the shards' footers only)."""
    import pyarrow.parquet as pq

    groups, first = [], 0
    for path in split_shards(dataset_dir, split):
        meta = pq.ParquetFile(path).metadata
        for index in range(meta.num_row_groups):
            rows = meta.row_group(index).num_rows
            groups.append(RowGroup(path, index, first, rows))
            first += rows
    return groups


def read_row_group(group: RowGroup, columns: Sequence[str] = (IMAGE_COLUMN, "label")) -> dict:
    """The columns of one streaming unit as Python lists (``image``: bytes)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(group.shard).read_row_group(group.index, columns=list(columns))
    return {name: table.column(name).to_pylist() for name in columns}


def read_image_bytes(dataset_dir: Path, rows: pd.DataFrame) -> list[bytes]:
    """The encoded images of manifest ``rows`` (any subset, any order), read shard by shard."""
    import pyarrow.parquet as pq

    out: list[bytes | None] = [None] * len(rows)
    shards = rows["shard"].to_numpy()
    wanted = rows["row"].to_numpy()
    for name in sorted(set(shards)):
        positions = [i for i, s in enumerate(shards) if s == name]
        table = pq.read_table(dataset_dir / name, columns=[IMAGE_COLUMN])
        column = table.column(IMAGE_COLUMN).take([int(wanted[i]) for i in positions])
        for i, data in zip(positions, column.to_pylist(), strict=True):
            out[i] = data
    return out  # type: ignore[return-value]


def export_images(dataset_dir: Path, rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the original bytes of manifest ``rows`` as files under ``out_dir``, each at its
    original relative name (the manifest ``path``); return the files in ``rows``' order.

    For people and tests that want image files back (to look at them, or to hand them to a
    tool that reads files): the prepared dataset itself keeps only the shards."""
    files = []
    for data, rel in zip(read_image_bytes(dataset_dir, rows), rows["path"], strict=True):
        path = out_dir / str(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(path)
    return files


def read_shard_rows(shard: Path, rows: Sequence[int]) -> list[bytes]:
    """The encoded images at ``rows`` (any order) of one shard, reading only the row groups
    that hold them: a batch of a few rows costs a row group or two, not the whole shard."""
    import bisect
    import itertools

    import pyarrow.parquet as pq

    file = pq.ParquetFile(shard)
    meta = file.metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = list(itertools.accumulate(sizes, initial=0))
    bad = [r for r in rows if not 0 <= r < starts[-1]]
    if bad:
        raise IndexError(f"{shard}: no row {bad[0]} (it holds {starts[-1]})")
    group_of = {r: bisect.bisect_right(starts, r) - 1 for r in rows}
    groups = sorted(set(group_of.values()))
    before = itertools.accumulate((sizes[g] for g in groups), initial=0)  # one extra: the total
    offsets = dict(zip(groups, before, strict=False))
    table = file.read_row_groups(groups, columns=[IMAGE_COLUMN])
    local = [offsets[group_of[r]] + r - starts[group_of[r]] for r in rows]
    return table.column(IMAGE_COLUMN).take(local).to_pylist()
