"""Benchmark: what the hyperparameter search buys, tuned against default, test accuracy.

    python benchmarks/search.py [--experiments default pretrained] [--seeds 0 1 2]
                                [--trials 10] [--time-limit 600]

For each experiment and seed, in one run folder (stages in-process, no Prefect, no DVC, MLflow
and Optuna in the output folder): prepare and pretrain once, then each strategy of the
experiment trained twice by its stage ``transfer@NAME``: with ``transfer.*`` as params.yaml
gives them (``default``) and after a search of ``--trials`` trials (``tuned``: TPE, median
pruning, the first trial being the default). Each is evaluated on the same frozen test split.
The search selects on the validation split (10 images per class here), so the table shows
both validation and test accuracy: a tuned configuration that gains on validation and not on
test has overfitted the validation split.

Experiments:
- ``default``: params.yaml as it is (mnist5k -> UCI digits, 10 labels per class).
- ``pretrained``: the ``pretrained`` profile (ImageNet EfficientNet-Lite0 -> Fashion-MNIST,
  10 labels per class, 64 px).
Writes benchmarks/results/search.{json,md}; prints the summary JSON.
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

EXPERIMENTS = {  # profile, strategies searched
    "default": ("default", ["lp_ft", "full"]),
    "pretrained": ("pretrained", ["full"]),
}


def _params(experiment: str, seed: int, strategy: str, trials: int, args, project: Path):
    from tasks.core.params import resolve_params

    profile, _ = EXPERIMENTS[experiment]
    overrides = [
        f"base.seed={seed}",
        f"storage.tracking_uri=sqlite:///{project}/mlflow.db",
        f"storage.search_uri=sqlite:///{project}/optuna.db",
        f"base.experiment=bench-search-{experiment}",
        f"transfer.strategies=[{strategy}]",
        "evaluate.forgetting=false",
        f"search.trials={trials}",
        f"search.time_limit={args.time_limit or 'null'}",
        *args.set,
    ]
    return resolve_params(ROOT / "params.yaml", profile, overrides)


def _train_and_test(project: Path, params, strategy: str) -> dict:
    """Stage transfer@STRATEGY then evaluate: test and val accuracy, training report."""
    from tasks.core.context import candidate_report, open_context, read_json
    from tasks.core.params import write_resolved
    from tasks.stages import evaluate, transfer

    write_resolved(params, project)
    ctx = open_context(project, params)
    started = time.perf_counter()
    transfer.run_candidate(ctx, strategy)
    seconds = time.perf_counter() - started
    metrics = evaluate.run(ctx)["candidates"][strategy]
    report = read_json(candidate_report(ctx.layout, strategy))
    return {
        "test_accuracy": metrics["accuracy"],
        "val_accuracy": metrics.get("val_accuracy"),
        "seconds": seconds,
        "search": report.get("search"),
    }


def run_seed(experiment: str, seed: int, args) -> dict:
    from tasks.core.context import open_context
    from tasks.stages import prepare, pretrain

    project = args.work / f"{experiment}-s{seed}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    _, strategies = EXPERIMENTS[experiment]
    params = _params(experiment, seed, strategies[0], 0, args, project)
    ctx = open_context(project, params)
    prepare.run(ctx)
    pretrain.run(ctx)
    out = {"experiment": experiment, "seed": seed, "trials": args.trials, "strategies": {}}
    for strategy in strategies:
        default = _train_and_test(
            project, _params(experiment, seed, strategy, 0, args, project), strategy
        )
        tuned = _train_and_test(
            project, _params(experiment, seed, strategy, args.trials, args, project), strategy
        )
        out["strategies"][strategy] = {"default": default, "tuned": tuned}
        print(
            f"{experiment} seed={seed} {strategy}: default {default['test_accuracy']:.4f} "
            f"tuned {tuned['test_accuracy']:.4f} ({tuned['seconds']:.0f} s search + training)",
            file=sys.stderr,
            flush=True,
        )
    return out


def _mean_std(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    """Per experiment and strategy: default and tuned test/val accuracy, the paired gain,
    trials run (complete, pruned) and the search's wall time, mean and std over seeds."""
    table: dict = {}
    for run in runs:
        for strategy, r in run["strategies"].items():
            row = table.setdefault(run["experiment"], {}).setdefault(strategy, {})
            search = r["tuned"]["search"] or {}
            values = {
                "default_test": r["default"]["test_accuracy"],
                "tuned_test": r["tuned"]["test_accuracy"],
                "test_gain": r["tuned"]["test_accuracy"] - r["default"]["test_accuracy"],
                "default_val": r["default"]["val_accuracy"],
                "tuned_val": r["tuned"]["val_accuracy"],
                "val_gain": r["tuned"]["val_accuracy"] - r["default"]["val_accuracy"],
                "trials_complete": search.get("complete"),
                "trials_pruned": search.get("pruned"),
                "search_seconds": search.get("seconds"),
                "default_seconds": r["default"]["seconds"],
                "tuned_seconds": r["tuned"]["seconds"],
            }
            for key, value in values.items():
                if value is not None:
                    row.setdefault(key, []).append(value)
    return {
        e: {s: {k: _mean_std(v) for k, v in row.items()} for s, row in by_s.items()}
        for e, by_s in table.items()
    }


def markdown(summary: dict, args, budgets: dict[str, int]) -> str:
    def pct(s: dict) -> str:
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"

    def num(s: dict) -> str:
        return f"{s['mean']:.1f}"

    lines = [
        "Search budget per candidate: "
        + ", ".join(f"{e} {n} trials" for e, n in budgets.items())
        + f" (time limit {args.time_limit} s); TPE, median pruning, trial 0 = the defaults. "
        "Accuracy % mean ± std over the seeds; gains paired by seed.",
        "",
        "| experiment | strategy | default test | tuned test | test gain | default val | "
        "tuned val | val gain | trials complete (pruned) | search + final s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for experiment, by_s in summary.items():
        for strategy, s in by_s.items():
            trials = f"{num(s['trials_complete'])} ({num(s['trials_pruned'])})"
            lines.append(
                f"| {experiment} | {strategy} | {pct(s['default_test'])} | "
                f"{pct(s['tuned_test'])} | {pct(s['test_gain'])} | {pct(s['default_val'])} | "
                f"{pct(s['tuned_val'])} | {pct(s['val_gain'])} | {trials} | "
                f"{num(s['tuned_seconds'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / ".tlp" / "bench-search")
    parser.add_argument(
        "--combine", nargs="+", type=Path, default=[], help="re-tabulate earlier JSON results"
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    if args.combine:  # one table from earlier runs (one process per experiment)
        results = [json.loads(f.read_text()) for f in args.combine]
        runs = [r for result in results for r in result["runs"]]
        args.command = " && ".join(r["command"] for r in results)
        return _write(args, runs, sum(r["seconds"] for r in results), partial=False)
    started = time.perf_counter()
    runs = []
    for experiment in args.experiments:
        for seed in args.seeds:
            runs.append(run_seed(experiment, seed, args))
            _write(args, runs, time.perf_counter() - started, partial=True)
    result = _write(args, runs, time.perf_counter() - started, partial=False)
    print(json.dumps(result["summary"], indent=2))
    return result


def _write(args, runs: list[dict], seconds: float, partial: bool) -> dict:
    summary = summarise(runs)
    command = getattr(args, "command", None)
    result = {
        "command": command or "python benchmarks/search.py " + " ".join(sys.argv[1:]),
        "trials": {r["experiment"]: r["trials"] for r in runs},
        "time_limit": args.time_limit,
        "seeds": sorted({r["seed"] for r in runs}),
        "partial": partial,
        "seconds": round(seconds, 1),
        "summary": summary,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    budgets = {r["experiment"]: r["trials"] for r in runs}
    (args.out / "search.md").write_text(markdown(summary, args, budgets))
    return result


if __name__ == "__main__":
    main()
