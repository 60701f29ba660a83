"""Benchmark: a real pretrained backbone on data nobody tuned for. ImageNet EfficientNet-Lite0
(the built-in ``efficientnet-lite0``) into Fashion-MNIST, every candidate of the ``pretrained``
profile, at several labels per class and seeds, with two control sources of the same
architecture: random weights (no pretraining at all) and MNIST digits pretrained here.

    python benchmarks/pretrained_transfer.py                  # 1 5 10 50 labels x 3 seeds
    python benchmarks/pretrained_transfer.py --labels 10 --seeds 0 --sources imagenet

Sources (``--sources``):
- ``imagenet``: ``pretrain.checkpoint=efficientnet-lite0``, nothing trained in pretrain;
  candidates: the profile's (scratch, linear_probe, partial, full, lp_ft, l2sp).
- ``random``: a seeded random-init ``tf_efficientnet_lite0`` saved as a safetensors file and
  used as ``pretrain.checkpoint``: what transfer gives when the source knows nothing.
- ``mnist``: ``tf_efficientnet_lite0`` trained by the pretrain stage on mnist5k (grey digits
  repeated into 3 channels, at the profile's size): a real but unrelated source.
The controls run ``--control-strategies`` (linear_probe and full by default); scratch does not
depend on the source and is trained once per cell. Gains are against that scratch, and a
candidate is flagged negative transfer when its mean gain is below minus its spread.

Stages run in-process (no Prefect, no DVC), MLflow in the work folder. Writes
``benchmarks/results/pretrained_transfer.{json,md,png}`` after every cell (a stopped grid still
leaves its table) and prints the summary JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.transfer_strategies import (  # noqa: E402
    candidate_result,
    markdown,
    summarise,
)

SOURCES = ("imagenet", "random", "mnist")
ARCH = "tf_efficientnet_lite0"


def _random_checkpoint(work: Path, seed: int) -> Path:
    """A random-init EfficientNet-Lite0 as a weights file (the no-pretraining control)."""
    import torch
    from safetensors.torch import save_file

    from tasks.modeling.models import create_model

    path = work / f"random-init-s{seed}.safetensors"
    if not path.is_file():
        model = create_model(ARCH, 1000, 3, seed=seed)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        torch.manual_seed(seed)
    return path


def _source_overrides(source: str, seed: int, args) -> list[str]:
    if source == "imagenet":
        return ["pretrain.checkpoint=efficientnet-lite0"]
    if source == "random":
        return [f"pretrain.checkpoint={_random_checkpoint(args.work, seed)}", f"model.arch={ARCH}"]
    return [  # mnist: the pretrain stage trains the same architecture on digits
        "pretrain.checkpoint=null",
        f"model.arch={ARCH}",
        f"data.source.limit={args.mnist_images}",
        f"pretrain.epochs={args.mnist_epochs}",
        "pretrain.warmup_epochs=0",
    ]


def _params(source: str, labels: int, seed: int, strategies: list[str], args, project: Path):
    from tasks.core.params import resolve_params

    overrides = [
        *_source_overrides(source, seed, args),
        f"base.seed={seed}",
        f"storage.tracking_uri=sqlite:///{args.work}/mlflow.db",
        f"base.experiment=bench-pretrained-{source}",
        f"data.target.labels_per_class={labels}",
        f"transfer.strategies=[{','.join(strategies)}]",
        *args.set,
    ]
    return resolve_params(ROOT / "params.yaml", args.profile, overrides)


def run_source(source: str, labels: int, seed: int, strategies: list[str], args) -> dict:
    """prepare -> pretrain (resolve the checkpoint, or train the mnist control) -> transfer
    -> evaluate, in a project folder of its own; seconds per candidate from the transfer."""
    from tasks.core.context import open_context
    from tasks.stages import evaluate as evaluation
    from tasks.stages import prepare, pretrain, transfer

    project = args.work / f"{source}-l{labels}-s{seed}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    ctx = open_context(project, _params(source, labels, seed, strategies, args, project))
    prepare.run(ctx)
    started = time.perf_counter()
    cached = args.work / "mnist-sources" / f"s{seed}"
    if source == "mnist" and cached.is_dir():  # one digits source per seed, for every cell
        shutil.copytree(cached, ctx.layout.source_model)
    else:
        pretrain.run(ctx)
        if source == "mnist":
            shutil.copytree(ctx.layout.source_model, cached)
    pretrain_seconds = time.perf_counter() - started
    trained = transfer.run(ctx)
    metrics = evaluation.run(ctx)
    return {
        "pretrain_seconds": pretrain_seconds,
        "candidates": {
            name: {**candidate_result(m, trained[name]), "seconds": trained[name].get("seconds")}
            for name, m in metrics["candidates"].items()
        },
        "test_images": next(iter(metrics["candidates"].values())).get("n"),
    }


def _earlier_runs(args) -> list[dict]:
    """Cells of an earlier results file that this invocation's grid does not cover."""
    path = args.out / "pretrained_transfer.json"
    if not path.is_file():
        return []
    rerun = {(labels, seed) for labels in args.labels for seed in args.seeds}
    runs = json.loads(path.read_text())["runs"]
    return [r for r in runs if (r["labels_per_class"], r["seed"]) not in rerun]


def run_cell(labels: int, seed: int, args) -> dict:
    """Every source at one (labels, seed); control candidates are named ``source/strategy``."""
    candidates, seconds = {}, {}
    sources = [
        s
        for s in args.sources
        if s == "imagenet" or args.control_labels is None or labels in args.control_labels
    ]
    for source in sources:
        strategies = args.strategies if source == "imagenet" else args.control_strategies
        if source != "imagenet" and "imagenet" not in sources:
            strategies = ["scratch", *strategies]  # scratch comes with the first source
        done = run_source(source, labels, seed, strategies, args)
        seconds[f"{source}/pretrain"] = done["pretrain_seconds"]
        for name, m in done["candidates"].items():
            key = name if source == "imagenet" or name == "scratch" else f"{source}/{name}"
            candidates[key] = m
        test_images = done["test_images"]
    return {
        "experiment": "imagenet-to-fashion-mnist",
        "labels_per_class": labels,
        "seed": seed,
        "test_images": test_images,
        "overrides": args.set,
        "candidates": candidates,
        "seconds": seconds,
    }


def seconds_per_candidate(runs: list[dict]) -> dict:
    """Mean wall seconds of each candidate's training (transfer stage), per labels."""
    import statistics

    table: dict = {}
    for run in runs:
        for name, m in run["candidates"].items():
            if m.get("seconds") is not None:
                cell = table.setdefault(str(run["labels_per_class"]), {})
                cell.setdefault(name, []).append(m["seconds"])
    return {
        labels: {name: round(statistics.fmean(v), 1) for name, v in by_name.items()}
        for labels, by_name in table.items()
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for experiment, by_labels in summary.items():
        xs = sorted(by_labels, key=int)
        names = list(dict.fromkeys(n for lab in xs for n in by_labels[lab]))
        for name in names:
            pts = [(int(x), by_labels[x][name]["accuracy"]) for x in xs if name in by_labels[x]]
            ax.errorbar(
                [p[0] for p in pts],
                [100 * p[1]["mean"] for p in pts],
                yerr=[100 * (p[1]["std"] or 0) for p in pts],
                marker="o",
                capsize=3,
                linestyle="--" if "/" in name else "-",
                label=name,
            )
        ax.set_title(f"{experiment}: test accuracy (mean ± std over seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(args, runs: list[dict], seconds: float, partial: bool) -> dict:
    summary = summarise(runs)
    seeds = sorted({r["seed"] for r in runs})
    result = {
        "command": "python " + " ".join(["benchmarks/pretrained_transfer.py", *sys.argv[1:]]),
        "grid": {
            "labels_per_class": sorted({r["labels_per_class"] for r in runs}),
            "seeds": seeds,
            "sources": args.sources,
            "strategies": args.strategies,
            "control_strategies": args.control_strategies,
            "profile": args.profile,
            "overrides": args.set,
            "test_images": sorted({r["test_images"] for r in runs}),
        },
        "partial": partial,
        "seconds": round(seconds, 1),
        "seconds_per_candidate": seconds_per_candidate(runs),
        "summary": summary,
        "runs": runs,
    }
    out = args.out
    (out / "pretrained_transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "pretrained_transfer.md").write_text(markdown(summary, seeds) + "\n")
    plot(summary, out / "pretrained_transfer.png")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", type=int, default=[1, 5, 10, 50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["scratch", "linear_probe", "partial", "full", "lp_ft", "l2sp"],
    )
    parser.add_argument("--control-strategies", nargs="+", default=["linear_probe", "full"])
    parser.add_argument("--mnist-images", type=int, default=3000, help="mnist control source")
    parser.add_argument("--mnist-epochs", type=int, default=3)
    parser.add_argument("--profile", default="pretrained")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".tlp" / "bench-pretrained", help="git-ignored"
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the cells of the existing results JSON that this grid does not rerun",
    )
    parser.add_argument(
        "--control-labels",
        nargs="+",
        type=int,
        default=None,
        help="run the control sources only at these labels per class (default: all)",
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = _earlier_runs(args) if args.add else []
    for seed in args.seeds:
        for labels in args.labels:
            runs.append(run_cell(labels, seed, args))
            accuracy = {n: round(m["accuracy"], 4) for n, m in runs[-1]["candidates"].items()}
            print(f"labels={labels} seed={seed}: {accuracy}", file=sys.stderr, flush=True)
            _write(args, runs, time.perf_counter() - started, partial=True)
    result = _write(args, runs, time.perf_counter() - started, partial=False)
    print(json.dumps({k: result[k] for k in ("seconds", "grid", "seconds_per_candidate")}))
    print(json.dumps(result["summary"]))
    return result


if __name__ == "__main__":
    main()
