"""Benchmark: manifest build and GX validation on a 10,000-image 64x64 ImageFolder.

    .venv/bin/python benchmarks/data_validation.py [--images 10000] [--size 64] [--classes 10]

Builds the folder in a temp dir (RGB PNGs, random content, so every image is distinct), then
times, separately: the manifest build (scan, decode and check every file, hash, statistics,
seeded splits, the files stored into shards) and the Great Expectations validation (the
suite through a GX Checkpoint, with Data Docs written). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def build_folder(root: Path, images: int, size: int, classes: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()

    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset
    from tasks.data.manifest import read_classes

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        build_folder(tmp / "folder", args.images, args.size, args.classes)
        generate = time.perf_counter() - t0

        spec = default_section(
            "data.source",
            path=str(tmp / "folder"),
            test_fraction=0.2,
            val_per_class=10,
            labels_per_class=20,
        )
        t0 = time.perf_counter()
        manifest = prepare_dataset(spec, 0, tmp / "dataset", "target")
        build = time.perf_counter() - t0

        t0 = time.perf_counter()
        import great_expectations  # noqa: F401  (import cost reported apart)

        gx_import = time.perf_counter() - t0
        from tasks.data.expectations import ManifestCheck, validate_manifests

        check = ManifestCheck(
            "target", manifest, read_classes(tmp / "dataset"), ("train", "test", "val")
        )
        t0 = time.perf_counter()
        (report,) = validate_manifests([check], default_section("validation"), tmp / "docs")
        validate = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "benchmark": "data_validation",
                "images": args.images,
                "image_size": args.size,
                "classes": args.classes,
                "manifest_rows": len(manifest),
                "expectations": len(report.outcomes),
                "validation_success": report.success,
                "generate_folder_s": round(generate, 2),
                "manifest_build_s": round(build, 2),
                "manifest_build_images_per_s": round(len(manifest) / build, 1),
                "gx_import_s": round(gx_import, 2),
                "gx_validation_s": round(validate, 2),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
