import numpy as np
import pytest
from PIL import Image

from tasks.data.folders import folder_fingerprint
from tasks.data.ingest import inspect_image, name_problem, scan_image_folder


def _save(path, pixels, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def test_reencoded_copy_has_the_same_hash_and_stats(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    png = inspect_image(_save(tmp_path / "a.png", pixels), 10_000)
    bmp = inspect_image(_save(tmp_path / "a.bmp", pixels, "BMP"), 10_000)
    assert png.sha256 == bmp.sha256 and (png.width, png.height, png.channels) == (7, 9, 3)
    assert png.mean == pytest.approx(pixels.mean(), abs=1e-3)
    assert png.std == pytest.approx(pixels.astype(float).std(), abs=1e-3)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("ok name é.png", None),
        ("tab\there.png", "control or invisible"),
        ("zero\u200bwidth.png", "control or invisible"),
        (" lead.png", "white space"),
        ("caf\udce9.png", "not valid UTF-8"),
    ],
)
def test_name_problems(name, problem):
    found = name_problem(name)
    assert (found is None) if problem is None else (problem in found)


def test_scan_lists_classes_and_files_outside_class_folders(tmp_path):
    grey = np.full((4, 4), 9, dtype=np.uint8)
    _save(tmp_path / "b" / "x.png", grey)
    _save(tmp_path / "a" / "deep" / "y.png", grey)
    (tmp_path / "README.txt").write_text("about the data")
    (tmp_path / ".hidden").mkdir()
    scan = scan_image_folder(tmp_path)
    assert scan.classes == ("a", "b")
    assert scan.files == [("a/deep/y.png", "a"), ("b/x.png", "b")]
    assert [(b.path, b.problem) for b in scan.bad] == [
        ("README.txt", "file outside any class folder")
    ]


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    grey = np.full((4, 4), 9, dtype=np.uint8)
    _save(tmp_path / "a" / "x.png", grey)
    before = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == before
    _save(tmp_path / "a" / "y.png", grey)
    assert folder_fingerprint(tmp_path) != before
