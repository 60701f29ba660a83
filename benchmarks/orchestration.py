"""Benchmark: what ``tlp`` costs around the work it orchestrates.

    python benchmarks/orchestration.py [--profiles smoke default] [--set section.key=value]

In a fresh git + DVC project (a temp dir holding params.yaml, dvc.yaml and the stage code),
for each profile, each as a fresh ``tlp`` process:

1. ``tlp run`` (first run): wall time against the seconds spent inside the stages' own
   compute (``stage_compute_seconds`` in reports/summary.json); the rest is orchestration:
   interpreter and imports, the Prefect API, MLflow runs, DVC status/commit/push, the gate;
2. ``tlp run`` again with nothing changed, as a fraction of the first;
3. ``tlp run --force-flow`` with nothing changed: the same through the whole Prefect flow
   (what a no-change rerun cost before the shortcut);
4. ``tlp run --set base.seed=1`` (``--changed-run``): every stage reruns in a project that
   already has its MLflow store, DVC cache and a champion, as a scheduled retrain does; its
   overhead is measured as in 1. The promotion gate now scores two versions.

5. ``tlp run`` (first run) in a second fresh project served by a running Prefect server
   (started as ``tlp server`` starts it, recorded in ``.tlp/prefect/server.json``): the run
   uses it instead of starting a temporary API (``--no-server-run`` skips this).

Each first run's overhead is split as the issue asks (``split``, seconds; ``split_percent``
of the wall time): ``before_flow`` (interpreter, imports, waiting for the Prefect API),
``dvc`` (status, and the waits for the commits and the push, which run in the background),
``prefect_tasks`` (the stage task calls), ``after_flow`` (from the summary's wall time on:
the parent run's and the up-to-date record's finishing writes, Prefect's finalisation, the
temporary API's stop, exit), ``promotion_gate``, ``setup`` (params, checks, MLflow parent
run), ``report`` (the parent run's datasets), ``other`` (the rest of the flow body); ``goal``
says whether the overhead is within 5% of the wall time.

Also ``tlp --help`` (start-up). One PREFECT_HOME for the benchmark, warmed up first, so the
first run does not pay for creating Prefect's database.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TLP = Path(sys.executable).parent / "tlp"
PROJECT_FILES = ("params.yaml", "dvc.yaml", ".dvcignore")
GOAL_PERCENT = 5.0  # issue 15: orchestration of a default first run at most 5% of its wall time
DVC_PHASES = ("dvc_status", "dvc_commit", "dvc_push")


def make_project(base: Path) -> Path:
    """A fresh git + DVC repository with the project's params, DAG and stage code."""
    project = base / "project"
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    shutil.copy2(ROOT / "experiment.gitignore", project / ".gitignore")  # an experiment repo's
    shutil.copytree(ROOT / "tasks", project / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], cwd=project, check=True)
    return project


def tlp_environment(work: Path) -> dict:
    """The environment of the ``tlp`` processes a benchmark runs: one PREFECT_HOME under
    ``work`` whose database is created here (so the first run does not pay for it), the
    default ephemeral Prefect API per run, no tracking override, the venv's ``tlp`` first."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)  # measure the default: an ephemeral API per run
    env.pop("TLP_TRACKING_URI", None)
    env["PATH"] = f"{TLP.parent}{os.pathsep}{env.get('PATH', '')}"
    warm = "from prefect import flow\nflow(lambda: 1)()"  # create Prefect's database once
    subprocess.run([sys.executable, "-c", warm], env=env, check=True, capture_output=True)
    return env


def timed(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def startup(env: dict, repeats: int = 5) -> dict:
    times = [timed([str(TLP), "--help"], env)[0] for _ in range(repeats)]
    return {"command": "tlp --help", "median_seconds": statistics.median(times), "runs": times}


FIRST_FLOW = """
import sys, time
started = time.perf_counter()
from flows import prefect_api
api = prefect_api.start_early()
from flows.pipeline import transfer_pipeline  # torch, timm, MLflow, Prefect: what tlp run imports
from prefect import flow
with prefect_api.use(api):
    flow(name="bench-first-flow")(lambda: None)()  # the Prefect API is up and answering
print(time.perf_counter() - started)
"""


def first_flow(env: dict, rounds: int) -> dict:
    """Seconds from a fresh process to the end of its first (empty) flow: the imports of
    ``tlp run`` plus the ephemeral API start, with and without starting the API early."""
    times: dict[str, list[float]] = {"prestart": [], "no_prestart": []}
    for i in range(rounds):
        order = ("prestart", "no_prestart") if i % 2 == 0 else ("no_prestart", "prestart")
        for mode in order:
            env_ = {**env, "TLP_PREFECT_PRESTART": "1" if mode == "prestart" else "0"}
            argv = [sys.executable, "-c", FIRST_FLOW]
            out = subprocess.run(argv, env=env_, capture_output=True, text=True, check=True)
            times[mode].append(float(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": times,
        "median_seconds": med,
        "saved_seconds": med["no_prestart"] - med["prestart"],
    }


def split(wall: float, summary: dict) -> dict:
    """The overhead of one run by kind, in seconds (module docstring); they sum to it."""
    phases = summary.get("orchestration_seconds", {})
    before = summary.get("process_seconds_before_flow") or 0.0
    after = wall - summary["wall_seconds"] - before
    compute = sum(summary["stage_compute_seconds"].values())
    parts = {
        "before_flow": before,
        "dvc": sum(phases.get(k, 0.0) for k in DVC_PHASES),
        "prefect_tasks": phases.get("prefect_task", 0.0),
        "after_flow": after,
        "promotion_gate": phases.get("promotion_gate", 0.0),
        "setup": phases.get("setup", 0.0),
        "report": phases.get("report", 0.0),
    }
    parts["other"] = wall - compute - sum(parts.values())
    return {k: round(v, 3) for k, v in parts.items()}


def overhead(wall: float, summary: dict) -> dict:
    """Wall time of one ``tlp run`` split into the stages' own compute and the rest."""
    compute = sum(summary["stage_compute_seconds"].values())
    percent = 100.0 * (wall - compute) / wall
    return {
        "wall_seconds": wall,
        "inside_flow_seconds": summary["wall_seconds"],
        "outside_flow_seconds": wall - summary["wall_seconds"],  # imports, Prefect API, exit
        "before_flow_seconds": summary.get("process_seconds_before_flow"),
        "orchestration_inside_flow": summary.get("orchestration_seconds", {}),
        "stage_compute_seconds": compute,
        "stage_compute": summary["stage_compute_seconds"],
        "stage_wall": summary.get("stage_seconds", {}),  # compute plus DVC status and commit
        "overhead_seconds": wall - compute,
        "overhead_percent": percent,
        "split": split(wall, summary),
        "split_percent": {k: round(100.0 * v / wall, 2) for k, v in split(wall, summary).items()},
        "goal": {"max_percent": GOAL_PERCENT, "passed": percent <= GOAL_PERCENT},
    }


def served_first_run(base: Path, profile: str, extra: list[str], env: dict) -> dict:
    """A first ``tlp run`` in a fresh project that a running Prefect server serves (started
    and recorded as ``tlp server`` does; its start is not timed)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flows import prefect_api, servers

    project = make_project(base)
    # the project's own Prefect database, as by default: PREFECT_HOME would be a choice of
    # the user's (flows/prefect_api.py), so the server and the run get no PREFECT_HOME, and
    # a profiles file of their own instead of the user's
    env = {k: v for k, v in env.items() if k != "PREFECT_HOME"}
    env["PREFECT_PROFILES_PATH"] = str(base / "profiles.toml")
    saved = {k: os.environ.pop(k, None) for k in ("PREFECT_HOME", "PREFECT_PROFILES_PATH")}
    os.environ["PREFECT_PROFILES_PATH"] = env["PREFECT_PROFILES_PATH"]
    try:
        port = prefect_api._free_port()
        database = prefect_api.project_database_url(project, server=True)
    finally:
        os.environ.pop("PREFECT_PROFILES_PATH")
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    service = servers.prefect_server_service(
        port, database, prefect_api.server_record(project, port, database)
    )
    service.env["PREFECT_PROFILES_PATH"] = env["PREFECT_PROFILES_PATH"]
    service.env["PREFECT_HOME"] = str(base / "server-home")  # the server's own files
    proc = servers.start(service, base / "logs")
    try:
        servers.wait_healthy(service, proc, timeout=300)
        servers.write_record(service, proc)
        argv = [str(TLP), "-C", str(project), "run", "--profile", profile]
        argv += [a for s in extra for a in ("--set", s)]
        wall, _ = timed(argv, env)
        summary = json.loads((project / "reports" / "summary.json").read_text())
        used = summary.get("prefect_api_url") == service.record[1]["api_url"]
        return {"first_run_seconds": wall, "used_the_server": used, **overhead(wall, summary)}
    finally:
        servers.remove_record(service, proc)
        servers.stop([proc])


def profile_runs(
    project: Path, profile: str, extra: list[str], env: dict, changed: str | None
) -> dict:
    argv = [str(TLP), "-C", str(project), "run", "--profile", profile]
    argv += [a for s in extra for a in ("--set", s)]
    first, _ = timed(argv, env)
    summary = json.loads((project / "reports" / "summary.json").read_text())
    first_split = overhead(first, summary)
    cached, cached_out = timed(argv, env)
    forced, _ = timed([*argv, "--force-flow"], env)
    forced_summary = json.loads((project / "reports" / "summary.json").read_text())
    changed_split = None
    if changed:
        changed_wall, _ = timed([*argv, "--set", changed], env)
        changed_summary = json.loads((project / "reports" / "summary.json").read_text())
        changed_split = {"change": changed, **overhead(changed_wall, changed_summary)}
    return {
        "command": " ".join(["tlp", "run", "--profile", profile, *argv[6:]]),
        "first_run_seconds": first,
        **{k: v for k, v in first_split.items() if k != "wall_seconds"},
        "cached_rerun_seconds": cached,
        "cached_rerun_fraction": cached / first,
        "cached_rerun_shortcut": "Nothing changed" in cached_out,
        "forced_flow_rerun_seconds": forced,
        "forced_flow_rerun_fraction": forced / first,
        "forced_flow_inside_flow_seconds": forced_summary["wall_seconds"],
        "forced_flow_skipped": forced_summary["skipped_stages"],
        "changed_run": changed_split,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "default"])
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--first-flow-rounds", type=int, default=3)
    parser.add_argument(
        "--changed-run",
        default="base.seed=1",
        help="section.key=value for a last run where everything reruns ('' to skip)",
    )
    parser.add_argument(
        "--no-server-run",
        action="store_true",
        help="skip the first run served by a running Prefect server",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tlp-bench-orch-"))
    env = tlp_environment(work)
    result = {
        "command": "python benchmarks/orchestration.py " + " ".join(argv or sys.argv[1:]),
        "startup": startup(env),
        "first_flow": (
            first_flow({**env, "PYTHONPATH": str(ROOT)}, args.first_flow_rounds)
            if args.first_flow_rounds
            else None
        ),
        "profiles": {},
    }
    print(json.dumps(result["first_flow"]), file=sys.stderr, flush=True)
    try:
        for profile in args.profiles:
            project = make_project(work / profile)
            result["profiles"][profile] = profile_runs(
                project, profile, args.set, env, args.changed_run or None
            )
            if not args.no_server_run:
                served = served_first_run(work / f"{profile}-served", profile, args.set, env)
                result["profiles"][profile]["running_server"] = served
            print(json.dumps({profile: result["profiles"][profile]}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "orchestration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
