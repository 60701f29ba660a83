"""Benchmark: every transfer strategy against the same frozen target test split, over
experiments x labels per class x seeds; writes mean +- std per strategy as JSON and markdown.

    python benchmarks/transfer_strategies.py                        # the full grid (hours on CPU)
    python benchmarks/transfer_strategies.py --experiments default --labels 1 5 10 --seeds 0

Experiments:
- ``default``: params.yaml as it is (mnist5k -> uci-digits, source fitted to its frame and
  downsampled to 8x8 like the target).
- ``mnist-m``: mnist5k -> mnist-m (same digit shapes, photo backgrounds); no downsampling
  and no fitting to the frame (the target's digits have MNIST's size and margin).
  The source test fraction (0.3) covers the target test fraction (0.2) and both splits are
  drawn from the same seeded per-class order, so no target test digit is a source training
  digit.

Each (experiment, seed) pretrains one source model, reused for every ``labels_per_class``.
The stages run in-process (no Prefect, no DVC), with MLflow in the output folder. Prints the
summary JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENTS = {
    "default": [],
    "mnist-m": [
        "data.target.builtin=mnist-m",
        "data.target.test_fraction=0.2",
        "data.source.test_fraction=0.3",
        "pretrain.source_resolution=null",
        "pretrain.source_fit_frame=false",
    ],
}
from tasks.core.params import ALL_STRATEGIES as DEFAULT_STRATEGIES  # noqa: E402 (after sys.path)


def _params(experiment: str, labels: int, seed: int, args, project: Path):
    from tasks.core.params import resolve_params

    overrides = [
        *EXPERIMENTS[experiment],
        f"base.seed={seed}",
        f"storage.tracking_uri=sqlite:///{project.parent}/mlflow.db",
        f"base.experiment=bench-{experiment}",
        f"data.target.labels_per_class={labels}",
        f"transfer.strategies=[{','.join(args.strategies)}]",
        f"evaluate.forgetting={str(args.forgetting).lower()}",
        *(f"pretrain.epochs={args.pretrain_epochs}" for _ in [0] if args.pretrain_epochs),
        *(f"transfer.epochs={args.transfer_epochs}" for _ in [0] if args.transfer_epochs),
        *args.set,
    ]
    return resolve_params(ROOT / "params.yaml", args.profile, overrides)


def candidate_result(metrics: dict, trained: dict, forgetting: float | None = None) -> dict:
    """One candidate's row of a benchmark run: its test metrics and how it trained."""
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "ece": metrics["ece"],
        "epochs_run": trained["epochs_run"],
        "forgetting": forgetting,
    }


def run_one(experiment: str, labels: int, seed: int, args, source_cache: dict) -> dict:
    """prepare -> pretrain (once per experiment and seed) -> transfer -> evaluate."""
    from tasks.core.context import open_context
    from tasks.stages import evaluate as evaluation
    from tasks.stages import prepare as datasets
    from tasks.stages import pretrain, transfer

    project = args.work / f"{experiment}-l{labels}-s{seed}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    ctx = open_context(project, _params(experiment, labels, seed, args, project))
    timings = {}
    started = time.perf_counter()
    datasets.run(ctx)
    timings["prepare"] = time.perf_counter() - started
    key = (experiment, seed)
    started = time.perf_counter()
    if key not in source_cache:
        source_cache[key] = (pretrain.run(ctx), ctx.layout.source_model)
    else:
        shutil.copytree(source_cache[key][1], ctx.layout.source_model)
    timings["pretrain"] = time.perf_counter() - started
    started = time.perf_counter()
    trained = transfer.run(ctx)
    timings["transfer"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluation.run(ctx)
    timings["evaluate"] = time.perf_counter() - started
    forgetting = metrics.get("forgetting", {})
    return {
        "experiment": experiment,
        "labels_per_class": labels,
        "seed": seed,
        "source_test_accuracy": source_cache[key][0]["source_test_accuracy"],
        "source_probe_accuracy": forgetting.get("source_model_probe_accuracy"),
        "candidates": {
            name: candidate_result(
                m,
                trained[name],
                forgetting.get("candidates", {}).get(name, {}).get("forgetting"),
            )
            for name, m in metrics["candidates"].items()
        },
        "seconds": timings,
    }


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    """Mean +- std over seeds per (experiment, labels, strategy), plus gain over scratch."""
    table: dict = {}
    for run in runs:
        cell = table.setdefault(run["experiment"], {}).setdefault(str(run["labels_per_class"]), {})
        for name, m in run["candidates"].items():
            row = cell.setdefault(name, {"accuracy": [], "macro_f1": [], "ece": [], "gain": []})
            row["accuracy"].append(m["accuracy"])
            row["macro_f1"].append(m["macro_f1"])
            row["ece"].append(m["ece"])
            if "scratch" in run["candidates"]:
                row["gain"].append(m["accuracy"] - run["candidates"]["scratch"]["accuracy"])
            row.setdefault("forgetting", []).append(m["forgetting"])
    out: dict = {}
    for experiment, by_labels in table.items():
        for labels, by_name in by_labels.items():
            for name, row in by_name.items():
                stats = {k: _mean_std(v) for k, v in row.items()}
                gain = stats["gain"]
                # negative transfer: mean gain below zero by more than its spread over seeds
                # (undecided with fewer than two seeds)
                stats["negative_transfer"] = (
                    None if name == "scratch" or gain["n"] < 2 else gain["mean"] < -gain["std"]
                )
                out.setdefault(experiment, {}).setdefault(labels, {})[name] = stats
    return out


def _fmt(stat: dict, pct: bool = True) -> str:
    if stat["mean"] is None:
        return "-"
    scale = 100.0 if pct else 1.0
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def _flag(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[value]


def markdown(summary: dict, seeds: list[int]) -> str:
    lines = [f"Test accuracy % (mean ± std over seeds {seeds}); gain = accuracy - scratch.", ""]
    for experiment, by_labels in summary.items():
        lines += [f"### {experiment}", ""]
        lines += [
            "| labels/class | strategy | accuracy | macro-F1 | ECE | gain | forgetting | neg |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for labels, by_name in sorted(by_labels.items(), key=lambda kv: int(kv[0])):
            for name, s in by_name.items():
                lines.append(
                    f"| {labels} | {name} | {_fmt(s['accuracy'])} | {_fmt(s['macro_f1'])} | "
                    f"{_fmt(s['ece'])} | {_fmt(s['gain'])} | {_fmt(s['forgetting'])} | "
                    f"{_flag(s['negative_transfer'])} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--labels", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--transfer-epochs", type=int, default=None)
    parser.add_argument("--no-forgetting", dest="forgetting", action="store_false")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--combine", nargs="+", type=Path, default=[], help="re-tabulate earlier JSON results"
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".tlp" / "bench", help="run folders (git-ignored)"
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.combine:  # one table from earlier runs (e.g. one process per experiment)
        runs = [r for f in args.combine for r in json.loads(f.read_text())["runs"]]
        return _write(args, runs, seconds=None, partial=False)
    started = time.perf_counter()
    runs, sources = [], {}
    for experiment in args.experiments:
        for seed in args.seeds:
            for labels in args.labels:
                runs.append(run_one(experiment, labels, seed, args, sources))
                done = runs[-1]
                accuracy = {n: round(m["accuracy"], 4) for n, m in done["candidates"].items()}
                print(f"{experiment} labels={labels} seed={seed}: {accuracy}", file=sys.stderr)
                # written after every cell, so a stopped grid still leaves its table
                _write(args, runs, time.perf_counter() - started, partial=True)
    result = _write(args, runs, time.perf_counter() - started, partial=False)
    print(json.dumps({k: result[k] for k in ("seconds", "grid", "summary")}))
    return result


def _write(args, runs: list[dict], seconds: float | None, partial: bool) -> dict:
    summary = summarise(runs)
    seeds = sorted({r["seed"] for r in runs})
    result = {
        "grid": {
            "experiments": sorted({r["experiment"] for r in runs}),
            "labels_per_class": sorted({r["labels_per_class"] for r in runs}),
            "seeds": seeds,
            "strategies": list(dict.fromkeys(n for r in runs for n in r["candidates"])),
            "profile": args.profile,
            "pretrain_epochs": args.pretrain_epochs,
            "transfer_epochs": args.transfer_epochs,
            "overrides": args.set,
        },
        "partial": partial,
        "seconds": seconds,
        "summary": summary,
        "runs": runs,
    }
    (args.out / "transfer_strategies.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "transfer_strategies.md").write_text(markdown(summary, seeds) + "\n")
    return result


if __name__ == "__main__":
    main()
