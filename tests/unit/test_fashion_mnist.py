"""The built-in ``fashion-mnist``: Debian's IDX files read with numpy, its declared classes and
counts true, ``limit`` applied before any image is written, and a missing package named with
the command that installs it, before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.params import resolve_params
from tasks.data import builtins
from tasks.data.builtins import BUILTINS, load_builtin
from tasks.data.manifest import DataError

ROOT = Path(__file__).resolve().parents[2]
installed = pytest.mark.skipif(
    not builtins.FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)",
)


@installed
def test_fashion_mnist_is_the_70000_real_images():
    raw = load_builtin("fashion-mnist")
    assert raw.images.shape == (70_000, 28, 28) and raw.images.dtype == np.uint8
    assert raw.classes[0] == "t-shirt_top" and raw.classes[-1] == "ankle_boot"
    assert all(c.replace("_", "").replace("-", "").isalpha() for c in raw.classes)  # folder-safe
    assert raw.images.std() > 50  # photos, not blank arrays


# mnist5k is checked in test_datasets, where it is loaded anyway; mnist-m has its labels
@pytest.mark.parametrize("name", ["uci-digits", "fashion-mnist"])
def test_declared_classes_and_counts_are_what_the_recipe_loads(name):
    """The pre-flight check counts a built-in's splits from its declaration, never loading it."""
    if BUILTINS[name].unavailable():
        pytest.skip(BUILTINS[name].unavailable())
    raw = load_builtin(name)
    assert raw.classes == BUILTINS[name].classes
    assert tuple(np.bincount(raw.labels).tolist()) == BUILTINS[name].class_counts


@installed
def test_limit_subsamples_before_any_image_is_written(tmp_path):
    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset

    spec = default_section(
        "data.target", builtin="fashion-mnist", limit=300, val_per_class=2, labels_per_class=5
    )
    manifest = prepare_dataset(spec, 0, tmp_path / "out")
    import pyarrow.parquet as pq

    shards = sorted((tmp_path / "out" / "shards").glob("*.parquet"))
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    assert written == len(manifest) == 300 and len(shards) == 4  # not 70,000
    assert manifest["class_name"].value_counts().tolist() == [30] * 10
    assert manifest["split"].value_counts().to_dict() == {
        "unlabeled": 10 * 14,
        "test": 10 * 9,
        "train": 10 * 5,
        "val": 10 * 2,
    }


def test_a_missing_package_stops_before_any_work_naming_the_install(tmp_path, monkeypatch):
    from tasks.stages.preflight import PreflightError, check

    gone = tmp_path / "fashion-mnist"
    monkeypatch.setattr(builtins, "FASHION_MNIST_DIR", gone)
    params = resolve_params(ROOT / "params.yaml", "default", ["data.target.builtin=fashion-mnist"])
    with pytest.raises(PreflightError) as err:
        check(params, tmp_path)
    assert str(err.value) == (
        f"data.target.builtin fashion-mnist: {gone} not found; install it with: "
        "sudo apt-get install dataset-fashion-mnist"
    )
    with pytest.raises(DataError, match="install it with: sudo apt-get install"):
        load_builtin("fashion-mnist")  # `tlp stage prepare` / `dvc repro` say the same
