"""``tlp``, the command line. Heavy libraries load inside commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

# No network here and nothing to phone home to: set before Prefect, MLflow or GX is imported.
_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlp",
        description="Orchestrated transfer-learning pipeline (Prefect, timm, GX, MLflow, DVC).",
    )
    parser.add_argument(
        "-C",
        "--project-dir",
        type=Path,
        default=Path("."),
        help="project root (default: current dir)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_params_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", default="default", help="params profile: default, smoke, ...")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one params value (repeatable); the value is parsed as YAML",
        )

    run = sub.add_parser("run", help="run the whole pipeline as the Prefect flow transfer_pipeline")
    add_params_args(run)
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds this project, wait up to SECONDS for it (default: stop)",
    )
    run.add_argument(
        "--force-flow",
        action="store_true",
        help="run the Prefect flow even when nothing changed since the last run (DVC still "
        "skips the stages that are up to date)",
    )
    stage = sub.add_parser(
        "stage", help="run one stage with the resolved params (what dvc.yaml calls)"
    )
    stage.add_argument("name", help="prepare, validate, pretrain, transfer, evaluate or register")
    params = sub.add_parser(
        "params", help="validate params, write params.resolved.yaml and print it"
    )
    add_params_args(params)
    validate = sub.add_parser(
        "validate",
        help="prepare and validate the datasets only (GX), then print the Data Docs path",
    )
    add_params_args(validate)

    promote = sub.add_parser(
        "promote", help="move @champion to a version if the gate passes (--force overrides)"
    )
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="model version to promote")
    promote.add_argument("--reason", required=True, help="why (recorded with the move)")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the gate refuses (recorded)"
    )
    add_params_args(promote)
    rollback = sub.add_parser("rollback", help="move @champion back to @previous_champion")
    rollback.add_argument("name", help="registered model name")
    rollback.add_argument("--reason", default="rollback", help="why (recorded with the move)")
    add_params_args(rollback)
    lineage = sub.add_parser(
        "lineage", help="git commit, params, DVC hashes, MLflow and Prefect runs of a model"
    )
    lineage.add_argument("ref", metavar="NAME@ALIAS", help="NAME@ALIAS or NAME/VERSION")
    lineage.add_argument("--json", action="store_true", help="print JSON")
    add_params_args(lineage)
    reproduce = sub.add_parser(
        "reproduce", help="fetch a model's data from the DVC remote, rerun, compare metrics"
    )
    reproduce.add_argument("ref", metavar="NAME@ALIAS", help="NAME@ALIAS or NAME/VERSION")
    reproduce.add_argument(
        "--workdir", type=Path, default=None, help="new, empty dir (default: a temp dir)"
    )
    add_params_args(reproduce)
    rank = sub.add_parser(
        "rank", help="rank candidate source models for the target without fine-tuning"
    )
    rank.add_argument(
        "candidates",
        nargs="*",
        metavar="CANDIDATE",
        help="checkpoint folder, timm checkpoint file, or models:/NAME@ALIAS | models:/NAME/V "
        "(default: rank.candidates in params)",
    )
    rank.add_argument("--arch", help="timm architecture of checkpoint files (default model.arch)")
    rank.add_argument(
        "--score",
        choices=("logme", "leep", "nce", "h_score"),
        help="score to rank by (default rank.score)",
    )
    rank.add_argument("--json", action="store_true", help="print the ranking as JSON")
    add_params_args(rank)
    _add_ops_parsers(sub, add_params_args)
    return parser


def _add_ops_parsers(sub, add_params_args) -> None:
    """serve, ui, server: scheduling and the servers a team reviews runs in."""
    serve = sub.add_parser("serve", help="serve the pipeline on the cron schedule in params")
    add_params_args(serve)
    serve.add_argument(
        "--upcoming",
        type=int,
        default=0,
        metavar="N",
        help="print the next N scheduled times and exit (nothing is served)",
    )
    ui = sub.add_parser("ui", help="open the MLflow UI for this project's store on 127.0.0.1")
    add_params_args(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--open", action="store_true", help="also open it in the default browser")
    server = sub.add_parser(
        "server", help="start a Prefect server and an MLflow server on 127.0.0.1 (one box)"
    )
    add_params_args(server)
    server.add_argument("--prefect-port", type=int, default=4200)
    server.add_argument("--mlflow-port", type=int, default=5000)
    server.add_argument(
        "--backend-store-uri", help="MLflow store (default: base.tracking_uri, e.g. postgresql://)"
    )
    server.add_argument(
        "--artifacts", help="where MLflow keeps artifacts (default: mlartifacts/; or s3://...)"
    )
    server.add_argument(
        "--basic-auth",
        action="store_true",
        help="MLflow basic auth (admin from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD)",
    )


def _resolve(args):
    from tasks.core.params import PARAMS_FILE, resolve_params

    return resolve_params(args.project_dir / PARAMS_FILE, args.profile, args.overrides)


def cmd_params(args) -> int:
    import yaml

    from tasks.core.params import write_resolved

    params = _resolve(args)
    path = write_resolved(params, args.project_dir)
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    print(f"# written to {path}", file=sys.stderr)
    return 0


def cmd_stage(args) -> int:
    from tasks.core.context import open_context
    from tasks.core.params import load_resolved
    from tasks.stages import get_stage

    stage = get_stage(args.name)
    ctx = open_context(args.project_dir.resolve(), load_resolved(args.project_dir))
    stage.run(ctx)
    return 0


def print_summary(summary: dict) -> None:
    print("\nTransfer pipeline finished.")
    print(f"  MLflow tracking URI : {summary['tracking_uri']}")
    print(f"  open the MLflow UI  : {summary['ui_command']}")
    aliases = ", ".join(f"@{a}" for a in summary["aliases"]) or "no alias"
    print(
        f"  registered model    : {summary['model_name']} version {summary['version']} ({aliases})"
    )
    uri = f"models:/{summary['model_name']}@champion"
    print(f"  load it with        : mlflow.pyfunc.load_model('{uri}')")
    _print_accuracies(summary)
    skipped = ", ".join(summary["skipped_stages"]) or "none"
    print(f"  skipped (up to date): {skipped}")
    print(f"  wall time           : {summary['wall_seconds']:.1f} s  (reports/summary.json)")


def _print_accuracies(summary: dict) -> None:
    """Each candidate's test accuracy and gain over scratch; the registered one marked."""
    print("  test accuracy       :")
    for name, m in summary["candidates"].items():
        gain = summary["transfer_gain"].get(name)
        extra = f"  (gain over scratch {gain:+.4f})" if gain is not None else ""
        mark = "  <- registered" if name == summary["registered_strategy"] else ""
        print(f"    {name:<12} {m['accuracy']:.4f}{extra}{mark}")


def print_up_to_date(saved: dict, aliases: list[str], seconds: float) -> None:
    from tasks.stages import STAGE_NAMES

    s = saved["summary"]
    print("\nNothing changed: data and pipelines are up to date.")
    print(
        f"  params, data, code, dvc.lock and the registry are as Prefect flow run "
        f"{s.get('prefect_flow_run_name')} ({s.get('prefect_flow_run_id')}) left them "
        f"at {saved['finished']}"
    )
    shown = ", ".join(f"@{a}" for a in aliases) or "no alias"
    print(f"  registered model    : {s['model_name']} version {s['version']} ({shown})")
    print(f"  MLflow parent run   : {s.get('mlflow_run_id')}")
    print(f"  open the MLflow UI  : {s.get('ui_command')}")
    _print_accuracies(s)
    print(f"  skipped (up to date): {', '.join(STAGE_NAMES)}")
    print(
        f"  checked in {seconds:.2f} s without starting Prefect "
        "(tlp run --force-flow runs the flow anyway)"
    )


def _up_to_date(project: Path, params) -> bool:
    """The shortcut of tasks/core/uptodate.py: print the earlier result when nothing changed."""
    import time

    from tasks.core import uptodate

    started = time.perf_counter()
    saved, why = uptodate.check(project, params)
    if saved is None:
        print(f"tlp run: running the flow ({why})", file=sys.stderr)
        return False
    aliases = uptodate.aliases(params, project, saved["summary"]["version"])
    print_up_to_date(saved, aliases, time.perf_counter() - started)
    return True


def open_stores_early(project: Path, params) -> None:
    """What the flow does first, done while Prefect's API may still be starting: open the
    MLflow store (a new SQLite store takes seconds to create) and import DVC. A failure is
    left for the flow to report, where it names the stage and is recorded."""
    try:
        import dvc.repo  # noqa: F401

        from tasks.core import tracking

        tracking.configure(params.base.tracking_uri, project, params.base.experiment)
    except Exception:
        return


def cmd_run(args) -> int:
    params = _resolve(args)  # reject bad params before Prefect or any work starts
    from tasks.core.locking import run_lock

    project = args.project_dir.resolve()
    # held before Prefect starts: two runs never share the ephemeral API's SQLite database
    with run_lock(project, wait=args.wait):
        if not args.force_flow and _up_to_date(project, params):
            return 0
        from flows import prefect_api

        api = prefect_api.start_early()  # a subprocess: it starts during the imports below
        from flows.pipeline import transfer_pipeline

        open_stores_early(project, params)
        with prefect_api.use(api):
            summary = transfer_pipeline(
                profile=args.profile,
                overrides=args.overrides,
                project_dir=str(project),
                lock_wait=args.wait,
            )
    print_summary(summary)
    return 0


def cmd_validate(args) -> int:
    """prepare + validate in this process, without Prefect; dvc.lock is not touched."""
    from tasks.core.context import open_context, read_json
    from tasks.core.params import write_resolved
    from tasks.stages import StageFailed, get_stage

    params = _resolve(args)
    project = args.project_dir.resolve()
    write_resolved(params, project)
    ctx = open_context(project, params)
    get_stage("prepare").run(ctx)
    docs = ctx.layout.data_docs / "index.html"
    try:
        get_stage("validate").run(ctx)
    except StageFailed:
        if docs.is_file():
            print(f"Data Docs (failed validation): {docs}", file=sys.stderr)
        raise
    report = read_json(ctx.layout.validation_report)
    for name in ("source", "target"):
        r = report[name]
        warned = f", warned: {', '.join(r['warned'])}" if r["warned"] else ""
        print(
            f"{name}: {r['rows']} images, {r['expectations']} expectations passed, "
            f"{r['skipped_files']} files skipped{warned}"
        )
    shift = report["domain_shift"]
    print(f"domain shift (KS mean/std intensity): {shift['ks_mean']} / {shift['ks_std']}")
    print(f"Data Docs: {docs}")
    return 0


def _open_registry(args):
    """Resolved params of the project, with MLflow pointed at its store."""
    from tasks.core import tracking

    params = _resolve(args)
    project = args.project_dir.resolve()
    tracking.configure(params.base.tracking_uri, project, params.base.experiment)
    return project, params


def cmd_promote(args) -> int:
    from flows.promote import gate_and_promote

    project, params = _open_registry(args)
    outcome = gate_and_promote(
        project, params, args.name, args.version, args.reason, args.force, manual=True
    )
    if outcome["promoted"]:
        how = "FORCED past the gate" if outcome["forced"] else "gate passed"
        print(f"{args.name} version {args.version} is now @champion ({how}): {outcome['reason']}")
    else:
        print(outcome["reason"])
    return 0


def cmd_rollback(args) -> int:
    from tasks.registry.publishing import rollback_champion

    project, params = _open_registry(args)
    event = rollback_champion(
        project,
        args.name,
        args.reason,
        params.registry.champion_alias,
        params.promote.previous_alias,
        params.promote.retries,
        params.promote.retry_delay,
    )
    print(f"{args.name}: @champion rolled back from {event.from_version} to {event.to_version}")
    return 0


def cmd_lineage(args) -> int:
    import json
    import tempfile

    from tasks.registry.lineage import format_lineage, lineage

    _open_registry(args)
    with tempfile.TemporaryDirectory() as tmp:
        info = lineage(args.ref, Path(tmp))
        info.pop("files")
    print(json.dumps(info, indent=2) if args.json else format_lineage(info))
    return 0 if info["complete"] else 1


def cmd_reproduce(args) -> int:
    import json
    import tempfile

    from tasks.registry.lineage import reproduce

    project, _ = _open_registry(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tlp-reproduce-")) / "work"
    result = reproduce(args.ref, project, workdir.resolve())
    shown = {k: v for k, v in result.items() if k not in ("logged_metrics", "rerun_metrics")}
    print(json.dumps(shown, indent=2))
    ok = result["metrics_match"]
    print(f"metrics {'MATCH' if ok else 'DIFFER'} ({result['workdir']})", file=sys.stderr)
    return 0 if ok else 1


def cmd_rank(args) -> int:
    """Check every candidate, then rank them in the Prefect flow ``rank_sources``."""
    import json

    from tasks.core.params import CandidateParams, with_overrides
    from tasks.transferability.sources import check_candidate, ranking_text

    params = _resolve(args)
    if args.score:
        params = with_overrides(params, [f"rank.score={args.score}"], "--score")
    if args.candidates:
        specs = [CandidateParams(path=c, arch=args.arch) for c in args.candidates]
    else:
        specs = list(params.rank.candidates)
    if not specs:
        print(
            "tlp: rank: no candidates (pass them as arguments or set rank.candidates)",
            file=sys.stderr,
        )
        return 2
    project = args.project_dir.resolve()
    for spec in specs:  # fail before Prefect, MLflow or any training starts
        check_candidate(spec, params, project)
    from flows.rank import rank_sources

    rows = rank_sources(params=params, candidates=specs, project_dir=str(project))
    print(json.dumps(rows, indent=2) if args.json else ranking_text(rows, params.rank.score))
    return 0


def cmd_serve(args) -> int:
    import signal

    from flows.schedule import serve_pipeline, upcoming_runs

    # a shell without job control (nohup ... &, scripts) starts this with SIGINT ignored;
    # `kill -INT` must still stop the runner the way Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)

    cfg = _resolve(args).schedule
    profile = args.profile if args.profile != "default" else cfg.profile
    print(f"Schedule: {cfg.cron!r} in {cfg.timezone}; next runs:")
    for when in upcoming_runs(cfg, max(args.upcoming, 3)):
        print(f"  {when.isoformat()}")
    if args.upcoming:
        return 0
    print(
        f"Serving transfer_pipeline/{cfg.deployment} (profile {profile}, at most "
        f"{cfg.concurrency_limit} run(s) at once, {cfg.collision_strategy} when busy).\n"
        "The schedule is paused when this process stops; for always-on scheduling deploy "
        "infra/prefect.yaml to a work pool (README: Running for a team).",
        flush=True,
    )
    serve_pipeline(args.project_dir.resolve(), cfg, args.overrides, profile)
    return 0


def cmd_ui(args) -> int:
    from flows.servers import mlflow_ui_service, supervise
    from tasks.core.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(_resolve(args).base.tracking_uri, args.project_dir.resolve())
    if uri.startswith(("http://", "https://")):
        print(f"The tracking store is a server; its UI is at {uri}")
        return 0
    service = mlflow_ui_service(uri, args.port)
    print(f"MLflow UI for {uri}:")
    if args.open:
        import threading
        import webbrowser

        url = f"http://127.0.0.1:{args.port}"
        threading.Timer(3.0, webbrowser.open, [url]).start()
    return supervise([service])


def cmd_server(args) -> int:
    from flows.servers import mlflow_server_service, prefect_server_service, supervise
    from tasks.core.tracking import resolve_tracking_uri

    project = args.project_dir.resolve()
    configured = resolve_tracking_uri(_resolve(args).base.tracking_uri, project)
    store = args.backend_store_uri or configured
    if store.startswith(("http://", "https://")):
        store = resolve_tracking_uri("sqlite:///mlflow.db", project)
    artifacts = args.artifacts or str(project / "mlartifacts")
    services = [
        prefect_server_service(args.prefect_port),
        mlflow_server_service(store, artifacts, args.mlflow_port, args.basic_auth),
    ]
    print("Starting a Prefect server and an MLflow server on 127.0.0.1. Point runs at them with:")
    print(f"  export PREFECT_API_URL=http://127.0.0.1:{args.prefect_port}/api")
    print(f"  export TLP_TRACKING_URI=http://127.0.0.1:{args.mlflow_port}")
    return supervise(services, log_dir=project / ".tlp" / "logs")


COMMANDS = {
    "run": cmd_run,
    "stage": cmd_stage,
    "params": cmd_params,
    "validate": cmd_validate,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "lineage": cmd_lineage,
    "reproduce": cmd_reproduce,
    "rank": cmd_rank,
    "serve": cmd_serve,
    "ui": cmd_ui,
    "server": cmd_server,
}


def _lock_busy() -> type[Exception]:
    from tasks.core.locking import RunLockBusy

    return RunLockBusy


def main(argv: list[str] | None = None) -> int:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    from tasks.core.logs import configure_logging
    from tasks.core.params import ParamsError

    configure_logging()  # before Prefect is imported

    try:
        return COMMANDS[args.command](args)
    except ParamsError as exc:
        print(f"tlp: params error: {exc}", file=sys.stderr)
        return 2
    except _lock_busy() as exc:
        print(f"tlp: {args.command} stopped: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("tlp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; the traceback is in the Prefect/MLflow logs
        from tasks.stages import StageFailed

        reason = str(exc) if isinstance(exc, StageFailed) else f"{type(exc).__name__}: {exc}"
        print(f"tlp: {args.command} failed: {reason}", file=sys.stderr)
        if os.environ.get("TLP_DEBUG"):
            raise
        return 1


def console() -> None:
    """The ``tlp`` command. Its objects are frozen out of the garbage collector before the
    interpreter exits: the final collections over torch's, timm's and Great Expectations'
    objects took 2-3 s after every ``tlp run``, for memory the OS takes back anyway. Exit
    handlers (Prefect's log and event workers, the temporary API's stop) still run."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
