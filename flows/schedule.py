"""``tlp serve``: the pipeline as a Prefect deployment with a cron schedule from params.

The schedule (``schedule`` in params.yaml) is time-zone aware (``prefect.schedules.Cron``)
and the deployment has a concurrency limit (1 by default): a run that comes due while one is
running waits (ENQUEUE) or is skipped (CANCEL_NEW), never runs beside it.

A *served* deployment runs its flows in this process. When the process stops, Prefect pauses
the schedule (nothing fires while nobody serves it). For scheduling that survives a reboot,
deploy ``infra/prefect.yaml`` to a work pool and keep a worker running (README: "Running for
a team").
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.params import ParamsError, ScheduleParams


def build_schedule(cfg: ScheduleParams):
    """The params' cron and time zone as a Prefect schedule (bad cron -> ParamsError)."""
    from prefect.schedules import Cron

    try:
        return Cron(cfg.cron, timezone=cfg.timezone)
    except ValueError as exc:
        raise ParamsError(f"schedule.cron: {exc} (got {cfg.cron!r})") from None


def upcoming_runs(cfg: ScheduleParams, count: int = 5, after: datetime | None = None) -> list:
    """The next ``count`` run times of the schedule, computed by the Prefect server's code."""
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule

    build_schedule(cfg)  # the same validation as serving
    schedule = CronSchedule(cron=cfg.cron, timezone=cfg.timezone)
    start = after or datetime.now(UTC)
    return list(asyncio.run(schedule.get_dates(n=count, start=start)))


def build_deployment(
    project_dir: Path,
    cfg: ScheduleParams,
    overrides: list[str],
    profile: str | None = None,
    preset: str | None = None,
):
    """A RunnerDeployment of ``transfer_pipeline`` with the schedule and concurrency limit."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.pipeline import transfer_pipeline

    parameters: dict[str, Any] = {
        "profile": profile or cfg.profile,
        "preset": preset,
        "overrides": list(overrides),
        "project_dir": str(project_dir.resolve()),
    }
    return transfer_pipeline.to_deployment(
        name=cfg.deployment,
        schedule=build_schedule(cfg),
        parameters=parameters,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=cfg.concurrency_limit,
            collision_strategy=ConcurrencyLimitStrategy(cfg.collision_strategy),
        ),
        tags=["tlp", "served"],
        description="transfer_pipeline on the schedule in params.yaml (served by `tlp serve`).",
    )


def serve_pipeline(
    project_dir: Path,
    cfg: ScheduleParams,
    overrides: list[str],
    profile: str | None = None,
    preset: str | None = None,
) -> None:
    """Register the deployment, then run its scheduled flow runs here until interrupted."""
    from prefect import serve

    deployment = build_deployment(project_dir, cfg, overrides, profile, preset)
    # pause_on_shutdown: a schedule nobody serves must not pile up late runs
    serve(deployment, pause_on_shutdown=True, limit=cfg.concurrency_limit)
