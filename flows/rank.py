"""Prefect flow ``rank_sources``: score candidate sources on the target without fine-tuning.

The target's train split is prepared into ``.tlp/rank/target`` (the pipeline's DVC-tracked
``data/target`` is not touched); the ranking goes to an MLflow run ``rank``, the Prefect
markdown artifact ``source-ranking`` and the caller (printed by ``tlp rank``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.core import tracking
from tasks.core.context import WORK_DIR, StageContext, open_context
from tasks.core.logs import forward_to_prefect
from tasks.core.params import CandidateParams, Params
from tasks.transferability import ranking
from tasks.transferability.tables import ranking_markdown

RANK_TARGET = Path(WORK_DIR) / "rank" / "target"


@task(cache_policy=NO_CACHE)
def prepare_target(ctx: StageContext) -> Path:
    """The target dataset as the prepare stage would build it, in a work folder of its own."""
    from tasks.data.datasets import prepare_dataset

    p = ctx.params.data
    out = ctx.project_dir / RANK_TARGET
    prepare_dataset(p.target, p.split_seed, out, "target", p.max_image_pixels, ctx.project_dir)
    return out


@task(cache_policy=NO_CACHE)
def rank_task(ctx: StageContext, candidates: list[CandidateParams], target: Path) -> list[dict]:
    """Load or pretrain each candidate and score it; logged to the MLflow run ``rank``."""
    score = ctx.params.rank.score
    rows = ranking.rank_candidates(ctx, tuple(candidates), target)  # no run for a failure
    with tracking.child_run("rank", ctx.experiment_id, None):
        markdown = ranking_markdown(rows, score, _describe(ctx.params))
        ranking.log_ranking(rows, score, markdown)
    return rows


def _describe(params: Params) -> str:
    t = params.data.target
    name = t.builtin or t.path
    return f"{name}, train split ({t.labels_per_class or 'all'} labels per class)"


@flow(name="rank_sources")
def rank_sources(
    params: Params, candidates: list[CandidateParams], project_dir: str = "."
) -> list[dict]:
    """Rank ``candidates`` for the target of ``params``; publish the table as an artifact."""
    forward_to_prefect()
    ctx = open_context(Path(project_dir).resolve(), params)
    target = prepare_target(ctx)
    rows = rank_task(ctx, candidates, target)
    markdown = ranking_markdown(rows, params.rank.score, _describe(params))
    create_markdown_artifact(markdown, key="source-ranking")
    return rows
