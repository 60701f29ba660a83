import io

import numpy as np
import pytest
from PIL import Image

from tasks.core.params import default_section
from tasks.data.builtins import BUILTINS, load_builtin
from tasks.data.datasets import prepare_dataset
from tasks.data.loading import load_split
from tasks.data.manifest import MANIFEST_COLUMNS, DataError
from tasks.data.shards import export_images, read_image_bytes
from tasks.data.splits import assign_splits, subsample


@pytest.fixture(scope="module")
def digits():
    return load_builtin("uci-digits")


def test_builtin_recipes_are_real_data(digits):
    assert digits.images.shape == (1797, 8, 8) and digits.images.dtype == np.uint8
    assert digits.images.max() == 255 and digits.classes == tuple("0123456789")
    mnist = load_builtin("mnist5k")
    assert mnist.images.shape == (5000, 28, 28) and mnist.images.dtype == np.uint8
    assert np.bincount(mnist.labels).tolist() == [500] * 10
    assert tuple(np.bincount(mnist.labels)) == BUILTINS["mnist5k"].class_counts  # declared


def test_unknown_builtin_is_named():
    with pytest.raises(DataError, match="unknown built-in dataset 'cifar'"):
        load_builtin("cifar")


def test_params_declare_exactly_the_builtin_recipes():
    """params checks ``builtin`` names without importing the data layer: the list it checks
    against must be the recipes that exist, no more and no fewer."""
    from tasks.core.params import BUILTIN_DATASETS
    from tasks.data.builtins import BUILTINS

    assert sorted(BUILTINS) == sorted(BUILTIN_DATASETS)


def _spec(**kw):
    return default_section(
        "data.source", builtin="uci-digits", test_fraction=0.3, val_per_class=5, **kw
    )


def test_test_and_val_splits_do_not_move_with_labels_per_class(digits):
    runs = {
        k: assign_splits(digits.labels, _spec(labels_per_class=k), 0, "t") for k in (1, 5, 10, None)
    }
    for splits in runs.values():
        assert np.array_equal(splits == "test", runs[1] == "test")
        assert np.array_equal(splits == "val", runs[1] == "val")
    # a smaller labelled set is a subset of a larger one
    assert np.all((runs[5] == "train") <= (runs[10] == "train"))
    assert np.all((runs[10] == "train") <= (runs[None] == "train"))
    assert np.bincount(digits.labels[runs[1] == "train"]).tolist() == [1] * 10
    assert set(runs[None]) == {"test", "val", "train"}


def test_splits_are_stratified_and_seeded(digits):
    a = assign_splits(digits.labels, _spec(labels_per_class=10), 0, "t")
    b = assign_splits(digits.labels, _spec(labels_per_class=10), 1, "t")
    test_counts = np.bincount(digits.labels[a == "test"])
    assert test_counts.min() >= 52 and test_counts.max() <= 55  # 30% of 174..183
    assert not np.array_equal(a, b)


def test_too_few_images_names_the_class(digits):
    with pytest.raises(DataError, match="class 0 has 178 images"):
        assign_splits(digits.labels, _spec(labels_per_class=500), 0, "uci-digits")


def test_subsample_is_stratified():
    labels = np.repeat(np.arange(10), 100)
    kept = subsample(labels, 200, 0)
    assert np.bincount(labels[kept]).tolist() == [20] * 10
    assert len(subsample(labels, None, 0)) == 1000


def test_materialised_dataset_round_trips(tmp_path, digits):
    """A built-in is written as one shard per split (no file per image), and every image
    decoded from the shards is the recipe's pixels, hashed and labelled as the manifest says."""

    from tasks.data.ingest import intensity_stats, pixel_sha256
    from tasks.data.manifest import SHARD_COLUMNS, read_info, read_manifest

    out = tmp_path / "target"
    manifest = prepare_dataset(_spec(labels_per_class=2), 0, out)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS + SHARD_COLUMNS
    assert manifest.equals(read_manifest(out))
    assert len(manifest) == 1797 and manifest["sha256"].is_unique
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    shards = [f"shards/{split}-000.parquet" for split in ("test", "train", "unlabeled", "val")]
    assert files == ["dataset.json", "manifest.parquet", *shards]  # no images/ folder
    assert [s["file"] for s in read_info(out)["shards"]] == shards
    for row, data in zip(manifest.itertuples(), read_image_bytes(out, manifest), strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        original = digits.images[int(row.path.split("/")[-1].removesuffix(".png"))]
        assert np.array_equal(pixels, original) and len(data) == row.bytes
        assert pixel_sha256(pixels, "L") == row.sha256
        assert (row.mean, row.std) == intensity_stats(pixels)
        assert digits.classes[row.label] == row.class_name == row.path.split("/")[1]
    prepare_dataset(_spec(labels_per_class=2), 0, tmp_path / "again")
    for name in ("manifest.parquet", *shards):  # rebuilt byte for byte: reproducible
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    train = load_split(tmp_path / "target", "train", channels=1)
    assert len(train) == 20 and train.classes == digits.classes
    assert train.images[0].dtype == np.uint8
    rows = manifest[manifest["split"] == "train"]
    assert train.names == rows["path"].tolist()
    expected = [digits.images[int(p.rsplit("/", 1)[1][:-4])] for p in rows.path]  # <i>.png
    assert all(np.array_equal(a, b) for a, b in zip(train.images, expected, strict=True))
    files = export_images(tmp_path / "target", rows.head(3), tmp_path / "files")
    assert [f.relative_to(tmp_path / "files").as_posix() for f in files] == rows.path.head(
        3
    ).tolist()
    assert np.array_equal(np.asarray(Image.open(files[0])), train.images[0])
