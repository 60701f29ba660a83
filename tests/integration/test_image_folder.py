"""Bring-your-own ImageFolder data through `tlp validate`: good folders pass and get Data Docs;
each kind of bad input is rejected with a message naming the file and the problem, and the
MLflow registry (a registered model with a champion alias) is left exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows import cli
from tasks.data.manifest import SPLITS

pytestmark = pytest.mark.integration
MODEL = "tlp-byo-guard"
PER_CLASS = 16


def write_image(path: Path, seed: int, mode: str = "L", size: int = 12, fmt: str = "PNG") -> Path:
    """A real image file with random content (so every image is distinct)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        img = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
        if mode == "RGBA":  # a real alpha channel, so the file keeps it
            img.putalpha(Image.fromarray(rng.integers(128, 256, (size, size), dtype=np.uint8)))
    img.save(path, format=fmt)
    return path


def make_folder(root: Path, classes=("cat", "dog"), seed: int = 0) -> Path:
    """An ImageFolder mixing formats and modes: grey PNG, RGB JPEG, BMP, RGBA WebP, palette TIFF."""
    kinds = [("L", "PNG", ".png"), ("RGB", "JPEG", ".jpg"), ("L", "BMP", ".bmp")]
    kinds += [("RGBA", "WEBP", ".webp"), ("P", "TIFF", ".tiff")]
    for c, name in enumerate(classes):
        for i in range(PER_CLASS):
            mode, fmt, ext = kinds[i % len(kinds)]
            write_image(root / name / f"{i:02d}{ext}", seed * 1000 + c * 100 + i, mode, 12, fmt)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow SQLite store holding one registered version with the champion alias."""
    import mlflow
    from mlflow import MlflowClient

    base = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{base}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("guard", artifact_location=(base / "art").as_uri())
    run = client.create_run(exp)
    (base / "model.json").write_text("{}")
    client.log_artifact(run.info.run_id, str(base / "model.json"), "model")
    client.create_registered_model(MODEL)
    version = client.create_model_version(
        MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return uri


def registry_state(uri: str) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))
    models = sorted(m.name for m in client.search_registered_models())
    return models, versions, client.get_model_version_by_alias(MODEL, "champion").version


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("src") / "digits", seed=7)


@pytest.fixture
def project(tmp_path, project_root):
    path = tmp_path / "project"
    path.mkdir()
    shutil.copy2(project_root / "params.yaml", path / "params.yaml")
    return path


def tlp_validate(project: Path, store: str, source: Path, target: Path, *sets: str) -> int:
    args = ["-C", str(project), "validate", "--profile", "smoke"]
    for item in (
        f"storage.tracking_uri={store}",
        f"data.source.path={source}",
        f"data.target.path={target}",
        *sets,
    ):
        args += ["--set", item]
    return cli.main(args)


def assert_rejected(capsys, code: int, store: str, before: tuple, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert registry_state(store) == before  # no new model, version or alias move
    return err


class _Balance(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    VOID |= {"track", "wbr", "path", "circle", "rect", "line", "polyline", "polygon"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def test_good_folder_validates_and_prints_data_docs(
    project, store, source_folder, tmp_path, capsys
):
    target = make_folder(tmp_path / "pets", classes=("cat", "dog", "fish"))
    write_image(target / "cat" / "nested dir" / "chat é 1.png", 999, "RGB")  # unusual but fine
    code = tlp_validate(project, store, source_folder, target, "preprocess.channels=1")
    out = capsys.readouterr().out
    assert code == 0
    docs = Path(out.split("Data Docs: ")[1].strip())
    html = docs.read_text()
    parser = _Balance()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert "target_manifest" in html and "source_manifest" in html
    assert (docs.parent / "domain_shift.png").stat().st_size > 1000
    manifest = pd.read_parquet(project / "data" / "target" / "manifest.parquet")
    assert set(manifest["mode"]) == {"L", "RGB", "RGBA", "P"}
    assert sorted(manifest["class_name"].unique()) == ["cat", "dog", "fish"]
    assert "images/cat/nested dir/chat é 1.png" in set(manifest["path"])
    report = json.loads((project / "reports" / "validation.json").read_text())
    assert report["target"]["success"] and report["domain_shift"]["ks_mean"] >= 0.0


def test_truncated_image_is_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    data = (target / "dog" / "05.png").read_bytes()
    (target / "dog" / "05.png").write_bytes(data[: len(data) // 2])
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    assert_rejected(
        capsys, code, store, before, "stage 'prepare' failed", "'dog/05.png'", "truncated image"
    )


def test_unreadable_file_with_image_extension_is_named(
    project, store, source_folder, tmp_path, capsys
):
    target = make_folder(tmp_path / "t")
    (target / "cat" / "fake.png").write_text("not really a png")
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    assert_rejected(capsys, code, store, before, "'cat/fake.png'", "not a readable image")


def test_non_image_file_is_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    (target / "cat" / "notes.txt").write_text("labels were checked by hand")
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    err = assert_rejected(capsys, code, store, before, "'cat/notes.txt'", "not an image file")
    assert "skip_bad_files" in err  # says how to skip instead


def test_empty_class_folder_is_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    (target / "bird").mkdir()
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target, "data.target.skip_bad_files=true")
    assert_rejected(capsys, code, store, before, "'bird'", "empty class folder")


def test_symlink_leaving_the_root_is_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    outside = write_image(tmp_path / "elsewhere" / "secret.png", 5)
    os.symlink(outside, target / "cat" / "link.png")
    os.symlink(outside.parent, target / "dog" / "linked_dir")
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    assert_rejected(
        capsys,
        code,
        store,
        before,
        "'cat/link.png': symlink points outside the dataset root",
        "'dog/linked_dir': symlink points outside the dataset root",
    )


def test_zero_byte_file_is_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    (target / "dog" / "empty.jpg").write_bytes(b"")
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    assert_rejected(capsys, code, store, before, "'dog/empty.jpg'", "empty file (0 bytes)")


def _png_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims a huge canvas: decoding it would exhaust memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))


def test_decompression_bombs_are_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    _png_bomb(target / "cat" / "bomb.png", 100_000, 100_000)  # PIL refuses it outright
    _png_bomb(target / "dog" / "big.png", 5_000, 5_000)  # over data.max_image_pixels
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target, "data.max_image_pixels=1000000")
    assert_rejected(
        capsys,
        code,
        store,
        before,
        "'cat/bomb.png': image too large",
        "'dog/big.png': image too large (5000x5000",
        "decompression bomb",
    )


def test_names_with_unusual_characters_are_named(project, store, source_folder, tmp_path, capsys):
    target = make_folder(tmp_path / "t")
    write_image(target / "cat" / "line\nbreak.png", 11)
    raw_dir = os.fsencode(target / "dog")
    with open(os.path.join(raw_dir, b"caf\xe9.png"), "wb") as handle:  # Latin-1, not UTF-8
        handle.write((target / "dog" / "00.png").read_bytes())
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    assert_rejected(
        capsys,
        code,
        store,
        before,
        "'cat/line\\nbreak.png': file name has control or invisible characters",
        "file name is not valid UTF-8",
    )


def test_bad_files_are_skipped_and_counted_only_when_params_say_so(
    project, store, source_folder, tmp_path, capsys
):
    target = make_folder(tmp_path / "t")
    (target / "cat" / "notes.txt").write_text("x")
    (target / "dog" / "empty.png").write_bytes(b"")
    code = tlp_validate(project, store, source_folder, target, "data.target.skip_bad_files=true")
    out = capsys.readouterr().out
    assert code == 0 and "target: " in out and "2 files skipped" in out
    info = json.loads((project / "data" / "target" / "dataset.json").read_text())
    assert {s["path"] for s in info["skipped"]} == {"cat/notes.txt", "dog/empty.png"}


def test_failed_expectation_stops_at_validate_with_paths(
    project, store, source_folder, tmp_path, capsys
):
    target = make_folder(tmp_path / "t")
    shutil.copyfile(target / "cat" / "00.png", target / "cat" / "00-copy.png")
    before = registry_state(store)
    code = tlp_validate(project, store, source_folder, target)
    err = assert_rejected(
        capsys,
        code,
        store,
        before,
        "stage 'validate' failed",
        "target: expect_column_values_to_be_unique on column 'sha256'",
        "images/cat/00-copy.png",
        "Data Docs (failed validation)",
    )
    assert "images/cat/00.png" in err


def test_dvc_tracked_folder_with_symlinked_cache_works(store, source_folder, tmp_path, capsys):
    """`dvc add` with cache.type symlink leaves links into .dvc/cache: they are accepted."""
    import subprocess
    import sys

    from tests.conftest import make_dvc_project

    project = make_dvc_project(tmp_path)
    make_folder(project / "pets")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "config", "cache.type", "symlink"], cwd=project, check=True)
    subprocess.run([*dvc, "add", "-q", "pets"], cwd=project, check=True, capture_output=True)
    assert (project / "pets" / "cat" / "00.png").is_symlink()
    code = tlp_validate(project, store, source_folder, Path("pets"))  # relative to the project
    assert code == 0, capsys.readouterr().err
    assert "Data Docs: " in capsys.readouterr().out


def test_folder_splits_are_seeded_and_test_stays_fixed(tmp_path):
    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset

    folder = make_folder(tmp_path / "pets")
    runs = {
        k: prepare_dataset(
            default_section(
                "data.source", path=str(folder), test_fraction=0.25, labels_per_class=k
            ),
            0,
            tmp_path / f"out{k}",
        )
        for k in (2, 6)
    }
    paths = {k: {s: set(m.loc[m["split"] == s, "path"]) for s in SPLITS} for k, m in runs.items()}
    assert paths[2]["test"] == paths[6]["test"] and len(paths[2]["test"]) == 8
    assert paths[2]["train"] < paths[6]["train"] and len(paths[6]["train"]) == 12
    assert len(paths[6]["unlabeled"]) == 2 * PER_CLASS - 8 - 12  # the pool for adaptation


def test_prepare_is_redone_when_the_users_folder_changes(tmp_path):
    """DVC cannot see a folder outside the project; the flow asks `still_valid` before skipping."""
    from types import SimpleNamespace

    from tasks.core.context import Layout
    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset
    from tasks.stages.prepare import still_valid

    layout = Layout(tmp_path / "project")
    folders = {role: make_folder(tmp_path / role, seed=i) for i, role in enumerate(("s", "t"))}
    for role, out in (("s", layout.source_data), ("t", layout.target_data)):
        spec = default_section(
            "data.source", path=str(folders[role]), test_fraction=0.2, labels_per_class=3
        )
        prepare_dataset(spec, 0, out)
    ctx = SimpleNamespace(layout=layout)
    assert still_valid(ctx)
    write_image(folders["t"] / "dog" / "new.png", 4242)
    assert not still_valid(ctx)


def test_folder_round_trips_through_shards_with_its_original_bytes(tmp_path):
    """A user's folder is ingested once into shards: each image's stored bytes are its file's
    bytes (no re-encoding, so decoding gives the file's pixels exactly: JPEG too), labelled
    by its class folder, and the dataset is a handful of files whatever its size."""
    import io

    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset
    from tasks.data.manifest import read_info
    from tasks.data.shards import SHARD_DIR, read_image_bytes

    folder = make_folder(tmp_path / "pets")
    for i, (mode, fmt, ext) in enumerate([("RGB", "JPEG", ".jpg"), ("L", "PNG", ".png")]):
        write_image(folder / "dog" / "nested" / "deeper" / f"n{i}{ext}", 900 + i, mode, 9, fmt)
    spec = default_section("data.source", path=str(folder), test_fraction=0.25, val_per_class=2)
    out = tmp_path / "out"
    write_image(out / "images" / "cat" / "stale.png", 1)  # an older layout's files: removed
    manifest = prepare_dataset(spec, 0, out)
    assert len(manifest) == 2 * PER_CLASS + 2 and not (out / "images").exists()
    stored = read_image_bytes(out, manifest)
    classes = read_info(out)["classes"]
    for row, data in zip(manifest.itertuples(), stored, strict=True):
        original = folder / row.path.removeprefix("images/")
        assert data == original.read_bytes() and len(data) == row.bytes
        with Image.open(io.BytesIO(data)) as a, Image.open(original) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)) and a.mode == b.mode == row.mode
        assert row.class_name == row.path.split("/")[1] == classes[row.label]
    assert "images/dog/nested/deeper/n0.jpg" in set(manifest["path"])
    # stored in a seeded random order, not class by class as the folder is scanned: a loader
    # block-shuffling row groups then still mixes classes in every batch
    assert list(manifest["class_name"]) != sorted(manifest["class_name"])
    files = [p for p in out.rglob("*") if p.is_file()]
    shards = sorted(p.name for p in (out / SHARD_DIR).iterdir())
    assert shards == [f"{s}-000.parquet" for s in ("test", "train", "val")]
    assert len(files) == 2 + len(shards)  # manifest.parquet, dataset.json, one shard a split


def test_unlabelled_folder_is_one_class_at_any_depth(
    project, store, source_folder, tmp_path, capsys
):
    """``data.source.unlabeled``: nested subfolders are not classes; every image is class
    ``unlabeled`` (label 0) and bad files are still named, then skipped when params say so."""
    pool = tmp_path / "pool"
    for i in range(3 * PER_CLASS):
        write_image(pool / f"batch{i % 3}" / ("deep" if i % 2 else "") / f"{i:02d}.png", 500 + i)
    (pool / "batch1" / "broken.png").write_bytes(b"\x89PNG not really")
    sets = ("data.source.unlabeled=true", "pretrain.objective=simclr")
    before = registry_state(store)
    code = tlp_validate(project, store, pool, source_folder, *sets)
    assert_rejected(capsys, code, store, before, "batch1/broken.png", "skip_bad_files")
    code = tlp_validate(
        project, store, pool, source_folder, *sets, "data.source.skip_bad_files=true"
    )
    assert code == 0, capsys.readouterr().err
    manifest = pd.read_parquet(project / "data" / "source" / "manifest.parquet")
    assert set(manifest["class_name"]) == {"unlabeled"} and set(manifest["label"]) == {0}
    assert len(manifest) == 3 * PER_CLASS and "images/batch1/deep/01.png" in set(manifest["path"])
    assert set(manifest["split"]) == {"train", "test"}
    info = json.loads((project / "data" / "source" / "dataset.json").read_text())
    assert info["classes"] == ["unlabeled"]
    assert [s["path"] for s in info["skipped"]] == ["batch1/broken.png"]
