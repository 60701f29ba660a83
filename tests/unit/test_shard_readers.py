"""Readers of a prepared dataset's shards: a few rows across row groups, decoding with the
image named on failure, the gate's test split (and a champion's data prepared before shards),
and ``tlp predict``'s reading of a prepared manifest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.data.manifest import MANIFEST, MANIFEST_COLUMNS, write_manifest
from tasks.data.shards import ROW_GROUP_ROWS, export_images, read_shard_rows, write_shards


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _prepared(root: Path, n: int, bad: int | None = None, shards: bool = True) -> pd.DataFrame:
    """``n`` 4x4 grey test images (pixel value i % 256) as a prepared dataset; row ``bad``'s
    bytes are not an image. ``shards=False``: the layout before shards (image files)."""
    encoded = [b"not an image" if i == bad else _png(i % 256) for i in range(n)]
    rows = []
    for i in range(n):
        values = {**dict.fromkeys(MANIFEST_COLUMNS, 0), "path": f"images/{i % 2}/{i:05d}.png"}
        values.update(label=i % 2, class_name=str(i % 2), split="test", mode="L")
        rows.append(tuple(values.values()))
    root.mkdir(parents=True)
    manifest = write_manifest(root, rows, {"classes": ["0", "1"]})
    if not shards:
        for rel, data in zip(manifest.path, encoded, strict=True):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return manifest
    manifest = write_shards(root, manifest, encoded.__getitem__)
    manifest.to_parquet(root / MANIFEST, index=False)
    return manifest


def test_a_few_rows_are_read_across_row_groups_in_the_order_asked(tmp_path):
    n = ROW_GROUP_ROWS * 2 + 10
    manifest = _prepared(tmp_path / "d", n)
    shard = tmp_path / "d" / manifest.shard[0]
    wanted = [n - 1, 3, ROW_GROUP_ROWS + 5, 3]
    assert read_shard_rows(shard, wanted) == [_png(r % 256) for r in wanted]
    with pytest.raises(IndexError, match=f"no row {n}"):
        read_shard_rows(shard, [0, n])
    files = export_images(tmp_path / "d", manifest.iloc[[5, 0]], tmp_path / "out")
    assert files == [tmp_path / "out" / manifest.path[5], tmp_path / "out" / manifest.path[0]]
    assert files[0].read_bytes() == _png(5)


def test_an_image_that_does_not_decode_is_named_by_its_dataset_and_original_path(tmp_path):
    from tasks.data.loading import load_split

    manifest = _prepared(tmp_path / "d", 6, bad=4)
    with pytest.raises(ValueError) as raised:
        load_split(tmp_path / "d", "test", channels=1)
    assert str(raised.value).startswith(f"{tmp_path / 'd'}: {manifest.path[4]}: cannot read image")


@pytest.mark.parametrize("shards", [True, False], ids=["shards", "files-before-shards"])
def test_the_gate_reads_its_test_split(tmp_path, shards):
    from tasks.registry.gate import load_test_split, read_split

    manifest = _prepared(tmp_path / "d", 5, shards=shards)
    split = load_test_split(tmp_path / "d", "abc")
    assert split.names == manifest.path.tolist() and split.classes == ["0", "1", "0", "1", "0"]

    class Model:  # what read_split asks of a pyfunc: its metadata's channels
        metadata = type("M", (), {"metadata": {"preprocess": {"channels": 3}}})()

    images = read_split(split, Model())
    assert [im.shape for im in images] == [(4, 4, 3)] * 5 and images[2][0, 0, 0] == 2


def test_predict_reads_a_prepared_manifest_from_its_shards(tmp_path):
    from tasks.registry.prediction import ShardItem, _read_batch, list_inputs

    manifest = _prepared(tmp_path / "d", 4, bad=1)
    items = list_inputs(["d/manifest.parquet"], tmp_path)
    assert items == [str((tmp_path / "d" / p).resolve()) for p in manifest.path]
    assert all(isinstance(x, ShardItem) for x in items)
    read = _read_batch(items[1:], 1, None)
    assert "cannot read image" in read[0] and read[1][0, 0] == 2 and read[2][0, 0] == 3
    (tmp_path / "d" / manifest.shard[0]).unlink()  # a lost shard: its rows fail, one by one
    assert all(x.startswith("cannot read") for x in _read_batch(items, 1, None))
