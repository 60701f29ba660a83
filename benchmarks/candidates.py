"""Benchmark: candidates as DVC stages of their own, and on two local workers.

    python benchmarks/candidates.py [--profile default] [--strategies scratch linear_probe ...]

In one fresh git + DVC project (as benchmarks/orchestration.py makes it), each step a fresh
``tlp run`` process:

1. ``first``: the whole pipeline, candidates one after another in the flow's process
   (``engine.workers=1``): the seconds of each ``transfer@NAME`` stage.
2. ``changed``: ``--set <one strategy's knob>`` (default ``transfer.l2sp_alpha=0.02``): which
   stages reran, and the seconds of the transfer stages against the first run's: the
   acceptance is at most 1/N of the full transfer plus overhead (N candidates).
3. Candidates removed (``models/candidates``) so that every candidate stage reruns, with
   nothing else changed, three times: ``sequential_1_thread`` (``base.threads=1
   engine.workers=1``), ``workers_2`` (``base.threads=1 engine.workers=2``: two worker
   processes, one thread each) and ``sequential_2_threads`` (the default on 2 cores:
   ``base.threads=2``, ``engine.workers=auto`` = 1). ``base.threads`` is in no stage's params
   and ``engine`` is outside the params hash, so only the candidates rerun. The speed-up is
   ``sequential_1_thread / workers_2`` (same threads per candidate, so the same arithmetic:
   per-candidate test and validation accuracy must be identical) and, for the user's view,
   ``sequential_2_threads / workers_2``.

The transfer seconds are the wall time of the candidate stages inside the flow
(``candidates_seconds`` of reports/summary.json: status, training on the engine and the DVC
records). Prints the result JSON and writes benchmarks/results/candidates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from orchestration import TLP, make_project, timed, tlp_environment  # noqa: E402 (after sys.path)

DEFAULT_STRATEGIES = ["scratch", "linear_probe", "partial", "full", "lp_ft", "l2sp"]


def run(project: Path, args, env: dict, extra: list[str]) -> dict:
    """One ``tlp run``; its wall time, the summary and the per-candidate accuracies."""
    argv = [str(TLP), "-C", str(project), "run", "--profile", args.profile]
    sets = [f"transfer.strategies=[{','.join(args.strategies)}]", *args.set, *extra]
    argv += [a for s in sets for a in ("--set", s)]
    wall, _ = timed(argv, env)
    summary = json.loads((project / "reports" / "summary.json").read_text())
    transfer = {k: v for k, v in summary["stage_seconds"].items() if k.startswith("transfer@")}
    return {
        "sets": sets,
        "wall_seconds": round(wall, 2),
        "candidates_seconds": summary.get("candidates_seconds"),
        "transfer_stage_seconds": transfer,
        "transfer_compute_seconds": {
            k: v for k, v in summary["stage_compute_seconds"].items() if k.startswith("transfer@")
        },
        "skipped_stages": summary["skipped_stages"],
        "engine": summary.get("engine"),
        "accuracy": {
            name: {"test": m["accuracy"], "val": m.get("val_accuracy")}
            for name, m in summary["candidates"].items()
        },
    }


def rerun_all_candidates(project: Path, args, env: dict, extra: list[str]) -> dict:
    """Every candidate stage made stale by removing its outputs, then one run."""
    shutil.rmtree(project / "models" / "candidates", ignore_errors=True)
    shutil.rmtree(project / ".tlp" / "resume", ignore_errors=True)  # no epoch to resume from
    return run(project, args, env, extra)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES)
    parser.add_argument("--change", default="transfer.l2sp_alpha=0.02")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tlp-bench-candidates-"))
    env = tlp_environment(work)
    try:
        project = make_project(work)
        n = len(args.strategies)
        first = run(project, args, env, ["engine.workers=1"])
        changed = run(project, args, env, ["engine.workers=1", args.change])
        full = first["candidates_seconds"]
        rerun = changed["candidates_seconds"]
        ran = [s for s in changed["transfer_stage_seconds"] if s not in changed["skipped_stages"]]
        per_candidate = first["transfer_compute_seconds"]
        sequential = rerun_all_candidates(
            project, args, env, ["engine.workers=1", "base.threads=1"]
        )
        parallel = rerun_all_candidates(project, args, env, ["engine.workers=2", "base.threads=1"])
        default = rerun_all_candidates(
            project, args, env, ["engine.workers=auto", "base.threads=2"]
        )
        same = sequential["accuracy"] == parallel["accuracy"]
        result = {
            "command": "python benchmarks/candidates.py " + " ".join(argv or sys.argv[1:]),
            "cpu_count": os.cpu_count(),
            "candidates": n,
            "rerun_after_one_change": {
                "change": args.change,
                "stages_rerun": ran,
                "full_transfer_seconds": full,
                "rerun_transfer_seconds": rerun,
                "ratio": rerun / full,
                "one_over_n": 1 / n,
                "rerun_candidate_first_run_seconds": {s: per_candidate.get(s) for s in ran},
                "overhead_seconds": rerun - sum(per_candidate.get(s, 0.0) for s in ran),
            },
            "workers": {
                "sequential_1_thread_seconds": sequential["candidates_seconds"],
                "workers_2_seconds": parallel["candidates_seconds"],
                "sequential_2_threads_seconds": default["candidates_seconds"],
                "speedup_same_threads": sequential["candidates_seconds"]
                / parallel["candidates_seconds"],
                "speedup_over_default": default["candidates_seconds"]
                / parallel["candidates_seconds"],
                "same_per_candidate_metrics": same,
            },
            "runs": {
                "first": first,
                "changed": changed,
                "sequential_1_thread": sequential,
                "workers_2": parallel,
                "sequential_2_threads": default,
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rerun_after_one_change", "workers")}, indent=2))
    return result


if __name__ == "__main__":
    main()
