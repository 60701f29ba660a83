"""Pipeline commands: run it, one stage of it, its params, its data checks, source ranking,
reproducing a registered model, and serving it on a schedule.

Each command imports what it runs inside its body, so ``tlp --help`` loads none of it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from flows.cli.options import (
    DEFAULT_PARAMS,
    ModelRef,
    ParamsOptions,
    Project,
    Wait,
    open_registry,
    project_lock,
)
from flows.cli.summary import print_summary, print_up_to_date


def run(
    *,
    options: ParamsOptions = DEFAULT_PARAMS,
    wait: Annotated[float, Parameter(metavar="SECONDS")] = 0.0,
    force_flow: bool = False,
    new_store: bool = False,
    project: Project,
) -> int:
    """Run the whole pipeline as the Prefect flow transfer_pipeline.

    Parameters
    ----------
    wait
        if another run holds this project, wait up to SECONDS for it (default: stop)
    force_flow
        run the Prefect flow even when nothing changed (DVC still skips up-to-date stages)
    new_store
        start afresh on purpose when the tracking store or DVC remote the project last used
        is gone or empty (.tlp/stores.json is rewritten after the run)
    """
    params = options.resolve(project)  # reject bad params before Prefect or any work starts
    project = project.resolve()
    preflight(params, project)  # and data, splits or strategies that cannot work
    check_stores(params, project, new_store)  # the stores the project last used still there
    check_task(params, project)  # the registered model belongs to this run's task
    from tasks.core.locking import run_lock

    # held before Prefect starts: two runs never share the ephemeral API's SQLite database
    with run_lock(project, wait=wait):
        _clean_up_after_a_killed_run(project, params)
        why = None if force_flow else _changed(project, params)
        if why == "":
            return 0
        from flows import prefect_api

        api = prefect_api.start_early(project)  # a subprocess: starts during the imports below
        _check_checkpoint(project, params, api)
        if why:
            print(f"tlp run: running the flow ({why})", file=sys.stderr)
        from flows.pipeline import transfer_pipeline

        open_stores_early(project, params)
        with prefect_api.use(api), prefect_api.project_database(project):
            summary = transfer_pipeline(
                profile=options.profile,
                preset=options.preset,
                overrides=list(options.overrides),
                project_dir=str(project),
                lock_wait=wait,
            )
    print_summary(summary)
    return 0


def _clean_up_after_a_killed_run(project: Path, params) -> None:
    """Under the lock, before anything else: a run killed with no chance to clean up (its
    temporary API's pid file is still there) left an API server, RUNNING MLflow runs and
    half-copied DVC files; end them now, even if nothing else is to be done. (The flow does
    the same at its start, for runs that used a configured Prefect server.)"""
    from flows import prefect_api

    if not prefect_api.left_by_a_killed_run(project):
        return
    from tasks.core import stale, tracking, versioning

    api = prefect_api.stop_orphan(project)
    experiment = tracking.configure(params.storage.tracking_uri, project, params.base.experiment)
    runs = stale.end_stale_runs([experiment])
    remote = versioning.ensure_remote(
        project, params.storage.dvc_remote, params.storage.dvc_remote_endpoint
    )
    files = stale.remove_dvc_partials(project, remote)
    server = f"its Prefect API (pid {api}) stopped, " if api else ""
    print(
        f"tlp run: an earlier run of this project was killed: {server}{len(runs)} MLflow "
        f"run(s) it left RUNNING marked FAILED, {len(files)} unfinished DVC file(s) removed",
        file=sys.stderr,
    )


def preflight(params, project: Path) -> None:
    """tasks/stages/preflight.py: stop in one line, before any work, when the data, the
    splits or the strategies cannot work."""
    from tasks.stages.preflight import check

    check(params, project)


def check_task(params, project: Path) -> None:
    """tasks/stages/preflight.py ``check_task``: a registered model of another task stops
    the run in one line, before any work."""
    from tasks.stages.preflight import check_task as check

    check(params, project)


def check_stores(params, project: Path, new_store: bool) -> None:
    """tasks/core/stores.py: the tracking store and DVC remote the last run used are still
    there, unless ``--new-store`` starts afresh on purpose."""
    from tasks.core import stores
    from tasks.stages.preflight import PreflightError

    if new_store:
        return
    try:
        stores.check(params, project)
    except stores.StoreMissing as exc:
        raise PreflightError(str(exc)) from None


def _check_checkpoint(project: Path, params, api) -> None:
    """A missing, unreadable or wrong-architecture ``pretrain.checkpoint`` stops the run here,
    before Prefect, MLflow or any stage (one line, exit 2); its imports overlap the API start."""
    from tasks.modeling.checkpoints import check_checkpoint

    try:
        check_checkpoint(params, project)
    except BaseException:
        if api is not None:
            api.stop()
        raise


def _changed(project: Path, params) -> str:
    """The shortcut of tasks/core/uptodate.py: print the earlier result and return "" when
    nothing changed, else return why the flow runs."""
    import time

    from tasks.core import uptodate

    started = time.perf_counter()
    saved, why = uptodate.check(project, params)
    if saved is None:
        return why
    aliases = uptodate.aliases(params, project, saved["summary"]["version"])
    print_up_to_date(saved, aliases, time.perf_counter() - started)
    return ""


def open_stores_early(project: Path, params) -> None:
    """What the flow does first, done while Prefect's API may still be starting: open the
    MLflow store (a new SQLite store takes seconds to create) and import DVC. A failure is
    left for the flow to report, where it names the stage and is recorded."""
    try:
        import dvc.repo  # noqa: F401

        from tasks.core import tracking

        tracking.configure(params.storage.tracking_uri, project, params.base.experiment)
    except Exception:
        return


def stage(name: str, /, *, wait: Wait = 0.0, project: Project) -> int:
    """Run one stage with the resolved params (what dvc.yaml calls).

    The flow runs its stages in its own process, not through this command, so a
    ``tlp run`` never waits on itself; ``dvc repro`` beside a run is refused here.

    Parameters
    ----------
    name
        prepare, validate, pretrain, transfer@STRATEGY (one candidate; transfer: every
        candidate in turn), evaluate or register
    """
    from tasks.core.context import open_context
    from tasks.core.params import load_resolved
    from tasks.stages import get_stage

    found = get_stage(name)
    with project_lock(project, wait, f"stage {name}"):
        found.run(open_context(project.resolve(), load_resolved(project)))
    return 0


def params(*, options: ParamsOptions = DEFAULT_PARAMS, wait: Wait = 0.0, project: Project) -> int:
    """Validate params against the data and this machine, write params.resolved.yaml and
    print it.

    A run in progress commits its stages with params.resolved.yaml, so the file is written
    under the project's lock: beside a run this stops (or queues, with --wait)."""
    import yaml

    from tasks.core.params import write_resolved

    resolved = options.resolve(project)
    # what `tlp run` would refuse before any work is refused here too: an exit 0 means the
    # values can run (timm knows them, the files exist, the data affords the splits)
    preflight(resolved, project.resolve())
    if resolved.pretrain.checkpoint is not None:
        from tasks.modeling.checkpoints import check_checkpoint

        check_checkpoint(resolved, project.resolve())
    with project_lock(project, wait, "params"):
        path = write_resolved(resolved, project)
    print(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), end="")
    print(f"# written to {path}", file=sys.stderr)
    return 0


def validate(*, options: ParamsOptions = DEFAULT_PARAMS, wait: Wait = 0.0, project: Project) -> int:
    """Prepare and validate the datasets only (GX), then print the Data Docs path.

    Runs in this process without Prefect; dvc.lock is not touched. It rewrites data/ and
    params.resolved.yaml, so it holds the project's lock (a run reads them).
    """
    from tasks.core.context import open_context, read_json
    from tasks.core.params import write_resolved
    from tasks.stages import StageFailed, get_stage

    resolved = options.resolve(project)
    project = project.resolve()
    preflight(resolved, project)
    with project_lock(project, wait, "validate"):
        write_resolved(resolved, project)
        ctx = open_context(project, resolved)
        get_stage("prepare").run(ctx)
        docs = ctx.layout.data_docs / "index.html"
        try:
            get_stage("validate").run(ctx)
        except StageFailed:
            if docs.is_file():
                print(f"Data Docs (failed validation): {docs}", file=sys.stderr)
            raise
        report = read_json(ctx.layout.validation_report)
    for role in ("source", "target"):
        r = report[role]
        warned = f", warned: {', '.join(r['warned'])}" if r["warned"] else ""
        print(
            f"{role}: {r['rows']} images, {r['expectations']} expectations passed, "
            f"{r['skipped_files']} files skipped{warned}"
        )
    shift = report["domain_shift"]
    print(f"domain shift (KS mean/std intensity): {shift['ks_mean']} / {shift['ks_std']}")
    print(f"Data Docs: {docs}")
    return 0


def rank(
    *candidates: Annotated[str, Parameter(name="CANDIDATE")],
    arch: str | None = None,
    score: Literal["logme", "leep", "nce", "h_score"] | None = None,
    as_json: Annotated[bool, Parameter(name="--json")] = False,
    options: ParamsOptions = DEFAULT_PARAMS,
    wait: Wait = 0.0,
    project: Project,
) -> int:
    """Rank candidate source models for the target without fine-tuning.

    Every candidate is checked first, then they are ranked in the Prefect flow rank_sources.

    Parameters
    ----------
    candidates
        checkpoint folder, timm checkpoint file or models:/NAME@ALIAS (default: rank.candidates)
    arch
        timm architecture of checkpoint files (default model.arch)
    score
        score to rank by (default rank.score)
    as_json
        print the ranking as JSON
    """
    import json

    from tasks.core.params import CandidateParams, with_overrides
    from tasks.transferability.sources import check_candidate
    from tasks.transferability.tables import ranking_text

    resolved = options.resolve(project)
    if score:
        resolved = with_overrides(resolved, [f"rank.score={score}"], "--score")
    if candidates:
        specs = [CandidateParams(path=c, arch=arch) for c in candidates]
    else:
        specs = list(resolved.rank.candidates)
    if not specs:
        print(
            "tlp: rank: no candidates (pass them as arguments or set rank.candidates)",
            file=sys.stderr,
        )
        return 2
    project = project.resolve()
    for spec in specs:  # fail before Prefect, MLflow or any training starts
        check_candidate(spec, resolved, project)
    from flows import prefect_api
    from flows.rank import rank_sources

    # it writes .tlp/rank/, the MLflow store and (pretrained candidates) checkpoints
    with project_lock(project, wait, "rank"), prefect_api.project_database(project):
        rows = rank_sources(params=resolved, candidates=specs, project_dir=str(project))
    print(json.dumps(rows, indent=2) if as_json else ranking_text(rows, resolved.rank.score))
    return 0


def reproduce(
    ref: ModelRef,
    /,
    *,
    workdir: Path | None = None,
    options: ParamsOptions = DEFAULT_PARAMS,
    wait: Wait = 0.0,
    project: Project,
) -> int:
    """Fetch a model's data from the DVC remote, rerun, compare metrics.

    The project's lock is held while its history and remote are read (a run may be
    pushing), then the work dir's own lock while the stages rerun there.

    Parameters
    ----------
    workdir
        new, empty dir (default: a temp dir)
    """
    import json
    import tempfile

    from tasks.registry.lineage import reproduce as rerun

    project, _ = open_registry(project, options)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tlp-reproduce-")) / "work"
    result = rerun(ref, project, workdir.resolve(), lock_wait=wait)
    shown = {k: v for k, v in result.items() if k not in ("logged_metrics", "rerun_metrics")}
    print(json.dumps(shown, indent=2))
    ok = result["metrics_match"]
    print(f"metrics {'MATCH' if ok else 'DIFFER'} ({result['workdir']})", file=sys.stderr)
    return 0 if ok else 1


def serve(
    *,
    upcoming: Annotated[int, Parameter(metavar="N")] = 0,
    options: ParamsOptions = DEFAULT_PARAMS,
    project: Project,
) -> int:
    """Serve the pipeline on the cron schedule in params.

    Parameters
    ----------
    upcoming
        print the next N scheduled times and exit (nothing is served)
    """
    import signal

    from flows.schedule import serve_pipeline, upcoming_runs

    # a shell without job control (nohup ... &, scripts) starts this with SIGINT ignored;
    # `kill -INT` must still stop the runner the way Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)

    cfg = options.resolve(project).schedule
    profile = options.profile if options.profile != "default" else cfg.profile
    print(f"Schedule: {cfg.cron!r} in {cfg.timezone}; next runs:")
    for when in upcoming_runs(cfg, max(upcoming, 3)):
        print(f"  {when.isoformat()}")
    if upcoming:
        return 0
    print(
        f"Serving transfer_pipeline/{cfg.deployment} (profile {profile}, at most "
        f"{cfg.concurrency_limit} run(s) at once, {cfg.collision_strategy} when busy).\n"
        "The schedule is paused when this process stops; for always-on scheduling deploy "
        "infra/prefect.yaml to a work pool (README: Running for a team).",
        flush=True,
    )
    from flows import prefect_api

    # each scheduled run holds the project's lock itself (flows/pipeline.py, holds_run_lock);
    # without a configured server, the runs are stored in the project's Prefect database
    with prefect_api.project_database(project.resolve()):
        serve_pipeline(project.resolve(), cfg, list(options.overrides), profile, options.preset)
    return 0


COMMANDS = {
    "run": run,
    "stage": stage,
    "params": params,
    "validate": validate,
    "rank": rank,
    "reproduce": reproduce,
    "serve": serve,
}
