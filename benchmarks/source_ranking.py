"""Benchmark: do the transferability scores rank sources the way fine-tuning does?

    python benchmarks/source_ranking.py                      # the pool below, 2 fine-tune seeds
    python benchmarks/source_ranking.py --seeds 0 --pretrain-epochs 2

A pool of sources that differ in what they learned is built (each pretrained in-process by
``tasks.transferability.sources.pretrain_candidate``, as ``transfer.source: auto`` would):
mnist5k at the target's 8x8 resolution for 1 and for several epochs, mnist5k at full
resolution, mnist-m, a different timm architecture, mnist5k with its labels shuffled
(random-label pretraining: a deliberately unrelated source), and a never-trained network.
Each is scored on the target train split (LogME, LEEP, NCE, H-score;
tasks/transferability/scores.py) and fine-tuned on it with the pipeline's ``full`` strategy
(tasks/modeling/strategies.py), then tested on the frozen target test split. Reported:
Kendall tau and weighted tau (scipy.stats) between each score and the fine-tuned accuracy
(mean over seeds), the top-1 pick's regret, and the wall time of scoring against fine-
tuning. Pretraining the pool is not counted in either. Prints the JSON and writes
benchmarks/results/source_ranking.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (--set overrides of the benchmark's params, shuffle the source labels?)
POOL = {
    "mnist5k-8px": ([], False),
    "mnist5k-8px-1ep": (["pretrain.epochs=1", "pretrain.warmup_epochs=0"], False),
    "mnist5k-28px": (["pretrain.source_resolution=null"], False),
    "mnist-m-8px": (["data.source.builtin=mnist-m"], False),
    "mnist5k-8px-mobilenetv3": (["model.arch=mobilenetv3_small_100"], False),
    "mnist5k-8px-random-labels": ([], True),
}
UNTRAINED = "untrained-resnet10t"


def _params(args, work: Path):
    from tasks.core.params import resolve_params

    return resolve_params(
        ROOT / "params.yaml",
        "default",
        [
            f"base.threads={args.threads}",
            f"storage.tracking_uri=sqlite:///{work}/mlflow.db",
            "base.experiment=bench-source-ranking",
            f"data.source.limit={args.source_limit}",
            f"data.target.labels_per_class={args.labels}",
            f"pretrain.epochs={args.pretrain_epochs}",
            "transfer.strategies=[full]",
            "transfer.resume=false",
            *args.set,
        ],
    )


def shuffle_labels(data_dir: Path, seed: int = 0) -> None:
    """Permute the labels of every split of a prepared dataset: random-label pretraining.

    The shards hold the labels too (a streaming loader reads them there), so they are
    written again with the permuted labels, the same images in the same order."""
    import shutil

    import numpy as np
    import pandas as pd

    from tasks.data.manifest import MANIFEST
    from tasks.data.shards import SHARD_DIR, read_image_bytes, write_shards

    manifest = pd.read_parquet(data_dir / MANIFEST)
    rng = np.random.default_rng(seed)
    manifest["label"] = rng.permutation(manifest["label"].to_numpy())
    images = read_image_bytes(data_dir, manifest)
    shutil.rmtree(data_dir / SHARD_DIR)
    written = write_shards(data_dir, manifest.drop(columns=["shard", "row"]), images.__getitem__)
    written.to_parquet(data_dir / MANIFEST, index=False)


def build_pool(ctx, args) -> dict[str, Path]:
    """Checkpoint folder of every pool member (pretrained, or reused from .tlp/sources)."""
    from tasks.core.params import CandidateParams
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint
    from tasks.transferability.sources import pretrain_candidate

    pool = {}
    built_file = ctx.project_dir / "pool-seconds.json"  # pretraining times, kept across reruns
    built = json.loads(built_file.read_text()) if built_file.is_file() else {}
    for name, (overrides, shuffled) in POOL.items():
        started = time.perf_counter()
        spec = CandidateParams(name=name, pretrain=overrides)
        pool[name] = pretrain_candidate(ctx, spec, shuffle_labels if shuffled else None)
        seconds = time.perf_counter() - started
        if name not in built or seconds > 5.0:  # not a reuse of an earlier invocation's
            built[name] = seconds
        print(f"[pool] {name}: {seconds:.1f} s", file=sys.stderr)
    built_file.write_text(json.dumps(built, indent=2))
    p = ctx.params
    classes = tuple(str(i) for i in range(10))
    model = create_model(p.model.arch, len(classes), p.preprocess.channels, seed=p.base.seed)
    card = ModelCard(arch=p.model.arch, classes=classes, preprocess=p.preprocess)
    pool[UNTRAINED] = save_checkpoint(model, card, ctx.project_dir / "untrained")
    return pool


def score_pool(ctx, pool: dict[str, Path]) -> dict[str, dict]:
    from tasks.core.params import CandidateParams
    from tasks.transferability.ranking import score_source, target_split
    from tasks.transferability.sources import load_source

    inputs, labels = target_split(ctx, ctx.layout.target_data)
    rows = {}
    for name, ckpt in pool.items():
        started = time.perf_counter()
        source = load_source(ctx, CandidateParams(name=name, path=str(ckpt)))
        row = score_source(source, inputs, labels, ctx.params.rank.batch_size)
        row["seconds"] = time.perf_counter() - started  # load + forward pass + every score
        rows[name] = row
    return rows


def fine_tune(ctx, ckpt: Path, seed: int) -> tuple[float, float]:
    """The pipeline's transfer stage (``full``) from ``ckpt``; (test accuracy, seconds)."""
    from tasks.core.params import with_overrides
    from tasks.data.loading import load_tensors
    from tasks.modeling.batches import accuracy
    from tasks.modeling.models import load_checkpoint
    from tasks.stages import transfer

    ctx.params = with_overrides(ctx.params, [f"base.seed={seed}"], "bench")
    if ctx.layout.source_model.exists():
        shutil.rmtree(ctx.layout.source_model)
    shutil.copytree(ckpt, ctx.layout.source_model)
    started = time.perf_counter()
    transfer.run(ctx)
    seconds = time.perf_counter() - started
    model, _ = load_checkpoint(ctx.layout.candidates / "full")
    x_test, y_test, _ = load_tensors(ctx.layout.target_data, "test", ctx.params.preprocess)
    return accuracy(model, x_test, y_test), seconds


def _source_accuracy(ckpt: Path) -> float | None:
    """The pretrained model's accuracy on its own source test split (eval mode), if known."""
    report = ckpt.parent.parent / "reports" / "pretrain.json"
    return json.loads(report.read_text())["source_test_accuracy"] if report.is_file() else None


def correlations(rows: dict[str, dict], accuracy: dict[str, float]) -> dict:
    from scipy.stats import kendalltau, weightedtau

    from tasks.transferability.scores import SCORES

    out = {}
    best = max(accuracy.values())
    for score in SCORES:
        names = [n for n in rows if rows[n][score] is not None]
        x = [rows[n][score] for n in names]
        y = [accuracy[n] for n in names]
        pick = max(names, key=lambda n: rows[n][score])
        out[score] = {
            "kendall_tau": float(kendalltau(x, y).statistic),
            "kendall_p": float(kendalltau(x, y).pvalue),
            "weighted_tau": float(weightedtau(x, y).statistic),
            "top1_pick": pick,
            "top1_regret": best - accuracy[pick],
            "n": len(names),
        }
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Source ranking: transferability scores vs fine-tuning",
        "",
        f"Target: {result['target']}; fine-tuning: `{result['strategy']}` strategy, "
        f"seeds {result['seeds']}; {result['machine']}.",
        "",
        "| candidate | source test acc | fine-tuned acc (mean) | logme | leep | nce | h_score "
        "| score s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in sorted(result["candidates"].items(), key=lambda kv: -kv[1]["accuracy"]):
        cells = " | ".join(f"{row[s]:.4f}" for s in ("logme", "leep", "nce", "h_score"))
        src = row["source_test_accuracy"]
        src = "-" if src is None else f"{src:.3f}"
        lines.append(
            f"| {name} | {src} | {row['accuracy']:.4f} | {cells} | {row['score_seconds']:.2f} "
            f"| {row['fine_tune_seconds']:.1f} |"
        )
    for key, title in (
        ("correlation", "All candidates"),
        ("correlation_same_arch", "Same architecture only (without the mobilenetv3 source)"),
    ):
        lines += [
            "",
            f"{title}:",
            "",
            "| score | Kendall tau (p) | weighted tau | top-1 pick | regret |",
            "|---|---|---|---|---|",
        ]
        for score, c in result[key].items():
            lines.append(
                f"| {score} | {c['kendall_tau']:+.3f} ({c['kendall_p']:.3f}) | "
                f"{c['weighted_tau']:+.3f} | {c['top1_pick']} | {c['top1_regret']:.4f} |"
            )
    t = result["timing"]
    lines += [
        "",
        f"Wall time: scoring all {len(result['candidates'])} candidates "
        f"{t['score_seconds']:.2f} s, "
        f"fine-tuning them (one seed) {t['fine_tune_seconds']:.1f} s: fine-tuning takes "
        f"**{t['ratio']:.0f}x** as long. Pretraining the pool ({t['pool_seconds']:.0f} s) is in "
        "neither.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".tlp" / "bench-source-ranking")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--labels", type=int, default=10, help="target labels per class")
    parser.add_argument("--pretrain-epochs", type=int, default=8)  # params.yaml's default
    parser.add_argument("--source-limit", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="more params overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from tasks.core.context import StageContext, open_context
    from tasks.data.datasets import prepare_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    params = _params(args, args.work)
    ctx = open_context(args.work, params)
    torch.set_num_threads(args.threads)
    t = params.data.target
    prepare_dataset(t, params.data.split_seed, ctx.layout.target_data, "target")
    pool = build_pool(ctx, args)
    pool_seconds = sum(json.loads((args.work / "pool-seconds.json").read_text()).values())

    rows = score_pool(ctx, pool)
    tune = StageContext(args.work / "tune", params, ctx.experiment_id, ctx.tracking_uri)
    shutil.copytree(ctx.layout.target_data, tune.layout.target_data, dirs_exist_ok=True)
    accuracies: dict[str, list[float]] = {n: [] for n in pool}
    tune_seconds: dict[str, float] = {}
    done_file = args.work / "fine-tuned.json"  # a killed benchmark resumes here
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    for name, ckpt in pool.items():
        for seed in args.seeds:
            key = f"{name}|{seed}|{ckpt}"
            if key not in done:
                done[key] = fine_tune(tune, ckpt, seed)
                done_file.write_text(json.dumps(done, indent=2))
            acc, seconds = done[key]
            accuracies[name].append(acc)
            tune_seconds.setdefault(name, seconds)  # the first seed's time
            print(f"[tune] {name} seed {seed}: acc {acc:.4f} in {seconds:.1f} s", file=sys.stderr)
    accuracy = {n: statistics.fmean(a) for n, a in accuracies.items()}
    score_total = sum(r["seconds"] for r in rows.values())
    tune_total = sum(tune_seconds.values())
    result = {
        "target": f"{t.builtin or t.path}, {args.labels} labels per class (train split)",
        "strategy": "full",
        "seeds": args.seeds,
        "pretrain_epochs": args.pretrain_epochs,
        "source_limit": args.source_limit,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU",
        "candidates": {
            n: {
                **{s: rows[n][s] for s in ("logme", "leep", "nce", "h_score")},
                "arch": rows[n]["arch"],
                "source_test_accuracy": _source_accuracy(pool[n]),
                "accuracy": accuracy[n],
                "accuracies": accuracies[n],
                "score_seconds": rows[n]["seconds"],
                "fine_tune_seconds": tune_seconds[n],
            }
            for n in pool
        },
        "correlation": correlations(rows, accuracy),
        # without the other architecture, whose poor fine-tuning dominates the full pool
        "correlation_same_arch": correlations(
            {n: r for n, r in rows.items() if r["arch"] == params.model.arch},
            {n: a for n, a in accuracy.items() if rows[n]["arch"] == params.model.arch},
        ),
        "timing": {
            "score_seconds": score_total,
            "fine_tune_seconds": tune_total,
            "ratio": tune_total / score_total,
            "pool_seconds": pool_seconds,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "source_ranking.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "source_ranking.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
