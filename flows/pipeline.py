"""Prefect flow ``transfer_pipeline``: the DVC stages as tasks, skipped when DVC says up to date.

Each stage runs in this process (heavy libraries are imported once), then is committed to
dvc.lock and the DVC cache exactly as ``dvc repro`` would record it, in a background thread
while the next stage computes; outputs are pushed to the DVC remote only after every stage
and every commit succeeded (and before the promotion gate), so a failed run leaves the
remote as it was.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import outcome
from flows.candidates import check_engine, engine_plan, train_candidates
from flows.promote import promote_model
from tasks.core import stale, tracking, uptodate, versioning
from tasks.core.context import (
    StageContext,
    open_context,
    read_json,
    remove_dropped_candidates,
    write_json,
)
from tasks.core.locking import holds_run_lock
from tasks.core.logs import forward_to_prefect
from tasks.core.params import PARAMS_FILE, UNHASHED_SECTIONS, resolve_params, write_resolved
from tasks.data.mlflow_datasets import ALL, log_datasets, split_datasets
from tasks.modeling.checkpoints import check_checkpoint
from tasks.registry import publishing as registry
from tasks.stages import CANDIDATES, STAGES, Stage, candidate_stage, get_stage, preflight

log = logging.getLogger(__name__)


@task(cache_policy=NO_CACHE)
def run_stage(name: str, ctx: StageContext) -> float:
    """One stage of the DAG; DVC, not Prefect's cache, decides whether it needs to run.

    Returns the seconds spent in the stage's own work (the rest is orchestration)."""
    started = time.perf_counter()
    get_stage(name).run(ctx)
    return time.perf_counter() - started


class PhaseClock:
    """Seconds spent in each kind of orchestration work (DVC, MLflow, the gate), summed over
    the run, so ``reports/summary.json`` shows where the time outside the stages went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {phase: round(s, 3) for phase, s in self.seconds.items()}


def _process_age() -> float | None:
    """Seconds since this process started: interpreter, imports and the Prefect API's start
    (in a long-lived process, such as a test session, it says little)."""
    try:
        import psutil

        return round(time.time() - psutil.Process().create_time(), 2)
    except Exception:
        return None


def _prefect_api_url() -> str:
    """The Prefect API this run reports to: a temporary one, the server serving the project
    (flows/prefect_api.py), or a configured one."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "none")


def _flow_run_info() -> dict[str, str]:
    from prefect.settings import PREFECT_UI_URL

    info = {"id": str(flow_run.id or "none"), "name": str(flow_run.name or "none")}
    # a temporary API has no UI to link to
    info["url"] = str(flow_run.ui_url) if PREFECT_UI_URL.value() else "none"
    return info


def build_summary(
    ctx: StageContext,
    timings: dict[str, float],
    skipped: list[str],
    wall: float,
    compute: dict[str, float] | None = None,
    phases: dict[str, float] | None = None,
) -> dict:
    layout, p = ctx.layout, ctx.params
    metrics = read_json(layout.metrics)
    registration = read_json(layout.registration)
    return {
        "tracking_uri": ctx.tracking_uri,
        "ui_command": f"mlflow ui --backend-store-uri {ctx.tracking_uri} --host 127.0.0.1",
        "experiment": p.base.experiment,
        "mlflow_run_id": ctx.parent_run_id,
        "prefect_flow_run_id": ctx.flow_run.get("id"),
        "prefect_flow_run_name": ctx.flow_run.get("name"),
        "model_name": registration["model_name"],
        "version": registration["version"],
        "model_uri": registration["model_uri"],
        "aliases": registry.version_aliases(registration["model_name"], registration["version"]),
        "registered_strategy": registration["strategy"],
        "champion_alias": p.registry.champion_alias,
        "challenger_alias": p.registry.challenger_alias,
        "best": metrics["best"],
        "candidates": metrics["candidates"],
        "transfer_gain": metrics["transfer_gain"],
        "negative_transfer": metrics.get("negative_transfer", {}),
        "selected_on": metrics.get("selected_on"),
        "stage_seconds": timings,
        "stage_compute_seconds": compute or {},
        "orchestration_seconds": phases or {},  # inside the flow, outside the stages' work
        "skipped_stages": skipped,
        "wall_seconds": round(wall, 2),
    }


def summary_markdown(summary: dict) -> str:
    """The Prefect artifact: what the terminal summary says (flows/outcome.py), as markdown."""
    aliases = summary["aliases"]
    test_n, val_n = outcome.split_sizes(summary)
    sizes = f"test: {test_n or '?'} images, validation: {val_n or '?'} images"

    def val(m: dict) -> str:
        return "n/a" if m.get("val_accuracy") is None else f"{m['val_accuracy']:.4f}"

    rows = "\n".join(
        f"| {name} | {m['accuracy']:.4f} | {val(m)} | {m['macro_f1']:.4f} | {m['ece']:.4f} |"
        for name, m in summary["candidates"].items()
    )
    flags = summary.get("negative_transfer", {})
    negative = [name for name, f in flags.items() if f["negative"]]
    said = (
        f"**Negative transfer**: {', '.join(negative)} fell below scratch by more than the "
        "margin.\n\n"
        if negative
        else ""
    )
    tie = outcome.tie_line(summary)
    gate = outcome.gate_line(summary)
    champion, _ = outcome.alias_names(summary)
    label, code = outcome.load_line(summary, aliases)
    audit = "".join(f"**Audit**: {f['message']}\n\n" for f in summary.get("audit") or ())
    return (
        f"## Transfer pipeline\n\nRegistered **{summary['model_name']}** version "
        f"{summary['version']} ({summary['registered_strategy']}), aliases "
        f"{', '.join(aliases) or 'none'}.\n\n"
        + (f"**Promotion gate**: {gate}\n\n" if gate else "")
        + f"**@{champion}**: {outcome.champion_line(summary, aliases)}.\n\n"
        + audit
        + f"{label[0].upper()}{label[1:]}: `{code}`\n\n"
        + f"| candidate | test accuracy | validation accuracy | macro-F1 | ECE |\n"
        f"|---|---|---|---|---|\n{rows}\n\n({sizes})\n\n"
        + (f"**Tie**: {tie}.\n\n" if tie else "")
        + said
        + f"Skipped (up to date): {', '.join(summary['skipped_stages']) or 'none'}.\n"
    )


def publish_source_choice(ctx: StageContext) -> None:
    """transfer.source: auto: the ranking as artifact ``source-ranking``, the choice as a tag."""
    from tasks.transferability.tables import ranking_markdown

    report = read_json(ctx.layout.pretrain_report)
    target = f"{ctx.layout.target_data} (train split)"
    create_markdown_artifact(
        ranking_markdown(report["ranking"], report["score"], target)
        + f"\nChosen: **{report['chosen']}**.\n",
        key="source-ranking",
    )
    tracking.set_tags({"source_choice": report["chosen"]}, run_id=ctx.parent_run_id)


def end_what_a_killed_run_left(ctx: StageContext, remote_url: str) -> None:
    """tasks/core/stale.py, under the run lock and before any stage: MLflow runs a killed
    process left RUNNING are marked FAILED, DVC's unfinished copies removed."""
    stale.end_stale_runs([ctx.experiment_id])
    stale.remove_dvc_partials(ctx.project_dir, remote_url)


def _open_run(
    project: Path, profile: str, preset: str | None, overrides: list[str], clock: PhaseClock
):
    """Params resolved and saved, the DVC remote set, the MLflow parent run started."""
    with clock("setup"):
        params = resolve_params(project / PARAMS_FILE, profile, overrides, preset)
        preflight.check(params, project)  # `tlp run` checked already; a deployment run has not
        preflight.check_task(params, project)  # the registered model is this run's task's
        check_checkpoint(params, project)  # a bad pretrain.checkpoint: before any stage runs
        check_engine(params)  # engine.address answers, and can report to this API
        write_resolved(params, project)
        ctx = open_context(project, params, flow_run=_flow_run_info())
        remote = versioning.ensure_remote(
            project, params.storage.dvc_remote, params.storage.dvc_remote_endpoint
        )
        end_what_a_killed_run_left(ctx, remote)
        ctx.parent_run_id = tracking.start_parent_run(
            ctx.experiment_id,
            run_name=f"pipeline-{ctx.flow_run['name']}",
            tags={
                "profile": profile,
                **({"preset": preset} if preset else {}),
                "params_hash": params.digest(),
                "prefect_flow_run_id": ctx.flow_run["id"],
                **stale.process_tags(),
            },
        )
        resolved = params.model_dump(mode="json", exclude=set(UNHASHED_SECTIONS))
        tracking.log_run_params(ctx.parent_run_id, tracking.flat_params(resolved))
    return ctx


def reconcile_aliases(ctx: StageContext) -> list[dict]:
    """Alias moves made outside tlp since the last run, and registrations cut short, found,
    recorded and flagged (tasks/registry/reconcile.py) before this run registers or gates
    anything; the summary reports them."""
    from tasks.registry.reconcile import reconcile

    p = ctx.params
    managed = (p.registry.challenger_alias, p.registry.champion_alias, p.promote.previous_alias)
    found = reconcile(ctx.project_dir, p.registry.model_name, managed)
    for finding in found:
        log.warning("audit: %s", finding.message)
    return [f.as_dict() for f in found]


def record_stores(ctx: StageContext, summary: dict) -> None:
    """What this successful run used (tasks/core/stores.py), for the next run's check."""
    from tasks.core import stores

    storage = ctx.params.storage
    stores.record(
        ctx.project_dir,
        ctx.tracking_uri,
        ctx.experiment_id,
        (summary["model_name"], summary["version"]),
        stores.remote_url(storage.dvc_remote, ctx.project_dir),
    )


@dataclass
class StageLog:
    """Seconds per stage name (all of it, and its own work), the skipped stages, and the
    stages that ran and are not committed yet."""

    timings: dict[str, float] = field(default_factory=dict)
    compute: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)
    candidates_seconds: float | None = None  # wall time of the stale candidates' training

    def hand_over(self, dvc: versioning.Background, clock: PhaseClock) -> None:
        """Commit the stages that ran (in order, in the background: ``versioning.Background``
        waits only for the commit before each, if still running)."""
        if not self.uncommitted:
            return
        with clock("dvc_commit"):
            for name in self.uncommitted:
                dvc.commit(name)
        self.uncommitted = []


def _run_stages(ctx: StageContext, clock: PhaseClock, dvc: versioning.Background):
    """Each stage DVC does not report up to date, as a Prefect task, committed to dvc.lock;
    stage ``transfer`` as its candidate stages ``transfer@NAME`` (``_run_candidates``).

    A stage's commit runs in the background (``versioning.Background``) while the next
    stage computes; it is handed over after the next stage's status is known (the status
    reads the stage's outputs as deps, not dvc.lock's record of them), and anything that
    reads DVC meanwhile waits for it. The last stage's commit is left in flight for the
    caller. Returns the ``StageLog``: seconds per stage (all of it, and the stage's own work),
    the skipped stages and the wall time of the candidates' training."""
    project = ctx.project_dir
    done = StageLog()
    # only a stage's own commit records it: what dvc.lock held at the start is what it holds
    # for each stage still to come (no waiting for the commit in flight to know it)
    recorded = versioning.recorded_stages(project)
    for stage in STAGES:
        if stage.name == CANDIDATES:
            _run_candidates(ctx, clock, dvc, recorded, done)
            continue
        t0 = time.perf_counter()
        with clock("dvc_status"):
            up_to_date = _up_to_date(ctx, stage, recorded)
        done.hand_over(dvc, clock)
        if up_to_date:
            done.skipped.append(stage.name)
            log.info("%s: up to date, skipped", stage.name)
        else:
            with clock("prefect_task"):
                seconds = run_stage.with_options(name=stage.name)(stage.name, ctx)
            clock.seconds["prefect_task"] -= seconds  # the stage's own work is not overhead
            done.compute[stage.name] = round(seconds, 3)
            done.uncommitted = [stage.name]
        done.timings[stage.name] = round(time.perf_counter() - t0, 3)
    done.hand_over(dvc, clock)
    return done


def _run_candidates(
    ctx: StageContext,
    clock: PhaseClock,
    dvc: versioning.Background,
    recorded: set[str],
    done: StageLog,
) -> None:
    """Stages ``transfer@NAME``: each one's status, then the stale ones trained in ONE call
    to ``train_candidates`` (which may train them at once, on the engine), each committed
    as a stage of its own. Candidates of strategies taken off the list are removed first:
    evaluate depends on the whole of models/candidates."""
    strategies = ctx.params.transfer.strategies
    status_seconds: dict[str, float] = {}
    stale = []
    with clock("dvc_status"):
        for name in remove_dropped_candidates(ctx.layout, strategies):
            log.info("%s: no longer in transfer.strategies, removed", candidate_stage(name))
        for name in strategies:
            t0 = time.perf_counter()
            if not _up_to_date(ctx, get_stage(candidate_stage(name)), recorded):
                stale.append(name)
            status_seconds[name] = time.perf_counter() - t0
    done.hand_over(dvc, clock)
    for name in strategies:
        if name not in stale:
            done.skipped.append(candidate_stage(name))
            log.info("%s: up to date, skipped", candidate_stage(name))
    seconds: dict[str, float] = {}
    if stale:
        for name in stale:  # the lines Stage.run logs, on the flow run's page
            log.info("%s: started", candidate_stage(name))
        started = time.perf_counter()
        with clock("candidates"):
            seconds = train_candidates(ctx, stale)
        done.candidates_seconds = round(time.perf_counter() - started, 3)
        for name in stale:
            log.info("%s: done in %.1f s", candidate_stage(name), seconds[name])
        # the candidates' own work is not overhead (when they ran at once, it adds up to more
        # than the call took: then none of the call is counted as overhead)
        clock.seconds["candidates"] -= min(sum(seconds.values()), time.perf_counter() - started)
    for name in strategies:
        stage = candidate_stage(name)
        if name in seconds:
            done.compute[stage] = round(seconds[name], 3)
        done.timings[stage] = round(status_seconds[name] + seconds.get(name, 0.0), 3)
    done.uncommitted = [candidate_stage(name) for name in stale]


def _up_to_date(ctx: StageContext, stage: Stage, recorded: set[str]) -> bool:
    """DVC's status, then the stage's own checks, then its checkpoints' bytes."""
    project = ctx.project_dir
    return (
        versioning.is_up_to_date(project, stage.name, recorded)
        and stage.still_valid(ctx)
        and _intact(project, stage.name)
    )


def _intact(project: Path, stage: str) -> bool:
    """The checkpoints of a stage about to be skipped hold what dvc.lock says; a corrupted
    one is removed with its cache object (one warning line each) and the stage reruns."""
    corrupted = versioning.corrupted_outputs(project, stage)
    versioning.discard_corrupted(project, corrupted)
    return not corrupted


@flow(name="transfer_pipeline")
@holds_run_lock  # one run per project at a time (tasks/core/locking.py); lock_wait is for it
def transfer_pipeline(
    profile: str = "default",
    overrides: list[str] | None = None,
    project_dir: str = ".",
    lock_wait: float = 0.0,
    preset: str | None = None,
) -> dict:
    """prepare -> validate -> pretrain -> transfer -> evaluate -> register, DVC-versioned."""
    forward_to_prefect()  # the stages' progress on this flow run's page
    started = time.perf_counter()
    before_flow = _process_age()
    clock = PhaseClock()
    project = Path(project_dir).resolve()
    ctx = _open_run(project, profile, preset, list(overrides or []), clock)
    params = ctx.params
    try:
        with clock("setup"):
            tracking.log_run_artifact(ctx.parent_run_id, project / "params.resolved.yaml")
            findings = reconcile_aliases(ctx)
        dvc = versioning.Background(project)
        try:
            done = _run_stages(ctx, clock, dvc)
            with clock("report"):  # the data every stage read, in the parent's Datasets panel
                datasets = split_datasets(project, ALL)  # reads dvc.lock: before the push
            dvc.push()  # after the last commit, while the parent run's report is logged
            with clock("report"):
                log_datasets(datasets, ctx.parent_run_id)
            if params.transfer.source == "auto":
                with clock("report"):
                    publish_source_choice(ctx)
            with clock("dvc_push"):  # the remote has it all before the gate moves an alias
                dvc.wait()
        finally:
            dvc.close()
        with clock("promotion_gate"):
            promotion = promote_model(project_dir=str(project))  # moves @champion, or not
        log.info("promotion gate: %s", promotion["reason"])
        wall = time.perf_counter() - started
        summary = build_summary(
            ctx, done.timings, done.skipped, wall, done.compute, clock.rounded()
        )
        summary["promotion"] = promotion
        summary["audit"] = findings
        summary["process_seconds_before_flow"] = before_flow
        summary["dvc_background_seconds"] = round(dvc.seconds, 3)  # off the critical path
        summary["prefect_api_url"] = _prefect_api_url()
        summary["engine"] = engine_plan(params, len(params.transfer.strategies)).summary()
        summary["candidates_seconds"] = done.candidates_seconds  # None: every one up to date
        write_json(ctx.layout.summary, summary)
        tracking.finish_parent_run(ctx.parent_run_id, summary, ctx.flow_run.get("url"))
        create_markdown_artifact(summary_markdown(summary), key="transfer-pipeline-summary")
        uptodate.record(project, params, summary)  # the next `tlp run` may skip the flow
        record_stores(ctx, summary)
        log.info("pipeline: finished in %.1f s", wall)
        return summary
    except BaseException:
        tracking.end_run(ctx.parent_run_id, failed=True)
        raise
