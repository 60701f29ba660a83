"""Benchmark: wall time and peak memory of the pretrain stage as the source grows x1, x4, x12.

    python benchmarks/scaling.py [--factors 1 4 12] [--epochs 1] [--modes stream memory]

The source is the built-in mnist5k grown by augmentation (x12 of 5,000 is 60,000 images):
copy 0 is the original, each further copy is shifted by a pixel or rotated by a few degrees
(11 distinct augmentations, so no copy duplicates another), written as a bigger ImageFolder
and prepared as the pipeline prepares any folder (into shards). Each measurement is the real
pretrain stage (``tasks.stages.pretrain.run``) in a fresh Python process, which reports its
own peak RSS (``resource.getrusage``). Modes: ``stream`` is the stage as it is (the source is
streamed from its shards, row group by row group, decoded once into the decoded cache under
the project's .tlp/cache/decoded: ``tasks.data.streaming``); ``memory`` swaps in whole-split
``load_tensors`` for comparison. Growth factors are relative to x1 of the same mode.

Acceptance (issue 15), judged on ``stream`` and written to the JSON's ``verdict``: time at
most linear (time growth <= image growth) and peak RSS at the largest factor at most 1.5x
of x1. One epoch by default to keep it cheap: that epoch decodes every image (and fills the
cache); with ``--epochs 2`` or more the later epochs read the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AUGMENTS = [
    *(("shift", dy, dx) for dy, dx in [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1)]),
    *(("rotate", angle, 0) for angle in [8, -8, 4, -4, 12]),
]  # 11: x12 without a repeated copy
RSS_LIMIT = 1.5  # peak RSS at the largest factor, as a multiple of x1

CHILD = """
import json, resource, sys, time
from pathlib import Path
from tasks.data import loading
from tasks.modeling import pretraining
from tasks.stages import pretrain
from tasks.core.context import open_context
from tasks.core.params import resolve_params
project, mode, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
if mode == "memory":
    # the whole split as one tensor
    pretraining.load_source_tensors = lambda d, split, p, **_: loading.load_source_tensors(
        d, split, p, stream=False
    )
params = resolve_params(project / "params.yaml", "default", overrides)
ctx = open_context(project, params)
started = time.perf_counter()
result = pretrain.run(ctx)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak, **result}))
"""


def grown_source(out: Path, factor: int, base_images: int) -> Path:
    """``base_images`` mnist5k digits (stratified) plus ``factor - 1`` augmented copies of
    each, as an ImageFolder."""
    import numpy as np
    from PIL import Image

    from tasks.data.builtins import load_builtin
    from tasks.data.splits import subsample

    raw = load_builtin("mnist5k")
    keep = subsample(raw.labels, base_images, 0)
    for name in raw.classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    for copy in range(factor):
        for i, image, label in zip(keep, raw.images[keep], raw.labels[keep], strict=True):
            if copy:
                kind, a, b = AUGMENTS[copy - 1]
                if kind == "shift":
                    image = np.roll(image, (a, b), axis=(0, 1))
                else:
                    image = np.asarray(Image.fromarray(image).rotate(a, resample=Image.BILINEAR))
            path = out / raw.classes[int(label)] / f"{i:05d}-{copy}.png"
            Image.fromarray(image).save(path, compress_level=1)
    return out


def prepare_project(base: Path, factor: int, base_images: int) -> Path:
    """A project folder whose data/source is the grown folder, prepared like any path source."""
    from tasks.core.params import resolve_params
    from tasks.data.datasets import prepare_dataset

    project = base / f"x{factor}"
    project.mkdir(parents=True)
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    folder = grown_source(base / f"folder-x{factor}", factor, base_images)
    params = resolve_params(project / "params.yaml", "default", [f"data.source.path={folder}"])
    prepare_dataset(params.data.source, 0, project / "data" / "source", "source")
    shutil.rmtree(folder)
    return project


def measure(project: Path, mode: str, overrides: list[str]) -> dict:
    argv = [sys.executable, "-c", CHILD, str(project), mode, *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=project)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        "process_seconds": (time.perf_counter() - started),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", nargs="+", type=int, default=[1, 4, 12])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["stream", "memory"])
    parser.add_argument("--base-images", type=int, default=5000, help="x1 (mnist5k: 5000)")
    parser.add_argument("--image-size", type=int, default=32, help="preprocess.image_size")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    overrides = [
        f"pretrain.epochs={args.epochs}",
        "pretrain.warmup_epochs=0",
        f"base.threads={args.threads}",
        "storage.tracking_uri=sqlite:///mlflow.db",
        "base.seed=0",
        f"preprocess.image_size={args.image_size}",
    ]
    work = Path(tempfile.mkdtemp(prefix="tlp-bench-scaling-"))
    rows: dict = {mode: {} for mode in args.modes}
    try:
        projects = {f: prepare_project(work, f, args.base_images) for f in args.factors}
        for factor in args.factors:  # alternate modes within a factor: load hits both alike
            for mode in args.modes:
                rows[mode][factor] = measure(projects[factor], mode, overrides)
                print(f"x{factor} {mode}: {rows[mode][factor]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = args.factors[0]
    growth = {
        mode: {
            f"x{f}": {
                "time": by[f]["seconds"] / by[base]["seconds"],
                "peak_rss": by[f]["peak_rss_bytes"] / by[base]["peak_rss_bytes"],
                "images": by[f]["train_images"] / by[base]["train_images"],
            }
            for f in args.factors
        }
        for mode, by in rows.items()
    }
    result = {
        "command": "python benchmarks/scaling.py " + " ".join(argv or sys.argv[1:]),
        "epochs": args.epochs,
        "epochs_note": "the first epoch decodes every image into the decoded cache; later "
        "epochs (if any) read it. 1 epoch keeps the benchmark cheap.",
        "base_images": args.base_images,
        "image_size": args.image_size,
        "threads": args.threads,
        "runs": {mode: {f"x{f}": r for f, r in by.items()} for mode, by in rows.items()},
        "growth": growth,
        "verdict": verdict(growth.get("stream"), args.factors),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"growth": growth, "verdict": result["verdict"]}, indent=2))
    return result


def verdict(growth: dict | None, factors: list[int]) -> dict | None:
    """Issue 15's acceptance on the streamed stage: time at most linear in the images at every
    factor, and peak RSS at the largest factor at most ``RSS_LIMIT`` times x1's."""
    if not growth:
        return None
    linear = {k: g["time"] <= g["images"] for k, g in growth.items()}
    last = f"x{factors[-1]}"
    rss = growth[last]["peak_rss"]
    return {
        "time_at_most_linear": linear,
        f"peak_rss_growth_{last}": rss,
        "peak_rss_limit": RSS_LIMIT,
        "passed": all(linear.values()) and rss <= RSS_LIMIT,
    }


if __name__ == "__main__":
    main()
