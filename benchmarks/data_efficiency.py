"""Benchmark: target test accuracy against labelled images per class, for scratch and each
transfer strategy, over seeds; a table (JSON + markdown) and a plot (PNG).

    python benchmarks/data_efficiency.py                                   # the full grid
    python benchmarks/data_efficiency.py --labels 1 5 all --seeds 0 \\
        --strategies scratch full --pretrain-epochs 2 --transfer-epochs 10   # a quick subset

It reuses ``benchmarks/transfer_strategies.py`` (``run_one`` trains one grid cell through the
real stages; ``summarise`` takes mean and std over seeds), so both benchmarks measure the
same thing. ``all`` is every labelled target train image: ``data.target.labels_per_class``
set to null, i.e. everything outside the fixed test and validation splits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.transfer_strategies import run_one, summarise  # noqa: E402
from tasks.core.params import ALL_STRATEGIES  # noqa: E402

ALL = "all"
FULL_LABELS = ["1", "2", "5", "10", "20", ALL]
QUICK_STRATEGIES = ["scratch", "linear_probe", "full", "l2sp", "mmd"]


def labels_override(labels: str) -> str:
    """The value ``run_one`` writes into ``data.target.labels_per_class`` (YAML null = all)."""
    return "null" if labels == ALL else str(int(labels))


def _label_key(labels: str) -> float:
    return float("inf") if labels in (ALL, "null", "None") else float(labels)


def markdown(summary: dict, seeds: list[int]) -> str:
    lines = [f"Target test accuracy % (mean ± std over seeds {seeds}).", ""]
    for experiment, by_labels in summary.items():
        strategies = list(next(iter(by_labels.values())))
        columns = sorted(by_labels, key=_label_key)
        names = [ALL if c == "null" else c for c in columns]
        lines += [f"### {experiment}", "", "| strategy | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for name in strategies:
            cells = []
            for column in columns:
                stat = by_labels[column].get(name, {}).get("accuracy", {})
                mean, std, n = stat.get("mean"), stat.get("std"), stat.get("n", 0)
                shown = "-" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}"
                cells.append(shown if n == len(seeds) or mean is None else f"{shown} (n={n})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    """Accuracy against labels per class (log x; ``all`` at the right end), one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiment, by_labels = next(iter(summary.items()))
    columns = sorted(by_labels, key=_label_key)
    xs = list(range(len(columns)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in next(iter(by_labels.values())):
        means = [100 * by_labels[c][name]["accuracy"]["mean"] for c in columns]
        stds = [100 * by_labels[c][name]["accuracy"]["std"] for c in columns]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xticks(xs, [ALL if c == "null" else c for c in columns])
    ax.set_xlabel("labelled target images per class")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title(f"Data efficiency ({experiment})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", default=FULL_LABELS, help="ints and/or 'all'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["scratch", *ALL_STRATEGIES[1:]])
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--transfer-epochs", type=int, default=None)
    parser.add_argument("--forgetting", action="store_true", help="also measure forgetting")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / ".tlp" / "bench-data-efficiency")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=[],
        help="tabulate the runs of earlier result JSONs (this benchmark's or "
        "transfer_strategies.py's, same experiment and params) instead of training",
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if "scratch" not in args.strategies:
        args.strategies = ["scratch", *args.strategies]  # every gain is measured against it

    started = time.perf_counter()
    if args.combine:  # grids run in separate processes, or cells taken from the strategy table
        runs = combined_runs(args.combine, args.experiment)
        args.labels = sorted({r["labels_per_class"] for r in runs}, key=_label_key)
        args.seeds = sorted({r["seed"] for r in runs})
        args.strategies = list(dict.fromkeys(n for r in runs for n in r["candidates"]))
        sources = [
            {"file": f.name, "command": json.loads(f.read_text()).get("command")}
            for f in args.combine
        ]
        return write(args, argv, runs, started, done=True, sources=sources)
    runs, sources = [], {}
    for seed in args.seeds:
        for labels in args.labels:
            run = run_one(args.experiment, labels_override(labels), seed, args, sources)
            run["labels_per_class"] = labels
            runs.append(run)
            accuracy = {n: round(m["accuracy"], 4) for n, m in run["candidates"].items()}
            print(f"labels={labels} seed={seed}: {accuracy}", file=sys.stderr, flush=True)
            result = write(args, argv, runs, started, done=len(runs) == total(args))
    return result


def combined_runs(files: list[Path], experiment: str) -> list[dict]:
    """The runs of ``experiment`` in earlier result files; a (labels, seed) cell found twice
    is kept once, from the later file."""
    cells: dict[tuple[str, int], dict] = {}
    for path in files:
        for run in json.loads(path.read_text())["runs"]:
            if run["experiment"] == experiment:
                labels = str(run["labels_per_class"])
                labels = ALL if labels in ("null", "None") else labels
                cells[(labels, run["seed"])] = {**run, "labels_per_class": labels}
    if not cells:
        raise SystemExit(f"no runs of experiment {experiment!r} in {', '.join(map(str, files))}")
    return sorted(cells.values(), key=lambda r: (r["seed"], _label_key(r["labels_per_class"])))


def total(args) -> int:
    return len(args.seeds) * len(args.labels)


def write(
    args, argv, runs: list[dict], started: float, done: bool, sources: list | None = None
) -> dict:
    """Results so far (after every grid cell, so an interrupted grid still leaves a table)."""
    summary = summarise(runs)
    command = "python benchmarks/data_efficiency.py " + " ".join(argv or sys.argv[1:])
    result = {
        "command": command.strip(),
        "grid": {
            "experiment": args.experiment,
            "labels_per_class": args.labels,
            "seeds": args.seeds,
            "strategies": args.strategies,
            "profile": args.profile,
            "pretrain_epochs": args.pretrain_epochs,
            "transfer_epochs": args.transfer_epochs,
            "overrides": args.set,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "combined_from": sources,  # result files whose runs make this table (--combine)
        "complete": done,
        "cells_done": f"{len(runs)} of {total(args)}",
        "summary": summary,
        "runs": runs,
    }
    (args.out / "data_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    seeds = sorted({run["seed"] for run in runs})
    (args.out / "data_efficiency.md").write_text(markdown(summary, seeds) + "\n")
    plot(summary, args.out / "data_efficiency.png")
    return result


if __name__ == "__main__":
    main()
