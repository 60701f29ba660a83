"""Scoring candidate sources on the labelled target train split and ranking them: one
forward pass per candidate, every transferability score, the table logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tasks.core.context import StageContext
from tasks.core.params import CandidateParams
from tasks.transferability import scores
from tasks.transferability.sources import Source, SourceError, check_candidate, load_source, slug
from tasks.transferability.tables import rank_rows


def score_source(
    source: Source, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict:
    """Every score of one source on (inputs, labels), and the seconds it took (forward
    pass included)."""
    from tasks.modeling.batches import features_and_logits, map_batches

    started = time.perf_counter()
    width = source.model.num_features

    def both(model, x):
        feats, logits = features_and_logits(model, x)
        return torch.cat([feats, logits], 1) if source.has_head else feats

    from threadpoolctl import threadpool_limits

    out = map_batches(source.model, both, inputs, batch_size).numpy()
    logits = out[:, width:] if source.has_head else None
    # one BLAS thread: these matrices are small, and on a busy machine more threads only
    # spin (17.8 s against 0.39 s for N=100, D=512 measured on 2 shared cores)
    with threadpool_limits(1):
        values = scores.compute_scores(out[:, :width], labels.numpy(), logits)
    return {
        "candidate": source.name,
        "origin": source.origin,
        "location": source.location,
        "arch": source.card.arch,
        "source_classes": source.card.num_classes or None,
        **values,
        "seconds": round(time.perf_counter() - started, 4),
        "note": "" if source.has_head else "no source classifier: LEEP and NCE not computed",
    }


def target_split(ctx: StageContext, target_dir: Path):
    from tasks.data.loading import load_tensors

    inputs, labels, _ = load_tensors(target_dir, "train", ctx.params.preprocess)
    return inputs, labels


def rank_candidates(
    ctx: StageContext, specs: tuple[CandidateParams, ...], target_dir: Path
) -> list[dict]:
    """Load (or pretrain) every candidate, score it on the target train split, rank."""
    if not specs:
        raise SourceError("no candidates: pass them on the command line or set rank.candidates")
    for spec in specs:  # every cheap check before any candidate is pretrained or loaded
        check_candidate(spec, ctx.params, ctx.project_dir)
    inputs, labels = target_split(ctx, target_dir)
    rows = []
    for spec in specs:
        source = load_source(ctx, spec)
        rows.append(score_source(source, inputs, labels, ctx.params.rank.batch_size))
    return rank_rows(rows, ctx.params.rank.score)


def log_ranking(rows: list[dict], score: str, markdown: str, choice: str | None = None) -> None:
    """Scores as metrics ``<candidate>.<score>`` and the table as artifacts of the active run."""
    import mlflow

    from tasks.core import tracking

    metrics = {
        f"{slug(r['candidate'])}.{s}": r[s] for r in rows for s in scores.SCORES if r[s] is not None
    }
    metrics.update({f"{slug(r['candidate'])}.seconds": r["seconds"] for r in rows})
    tracking.log_metrics(metrics)
    tracking.log_params({"rank_score": score, "candidates": [r["candidate"] for r in rows]})
    mlflow.log_text(markdown, "ranking.md")
    mlflow.log_dict(rows, "ranking.json")
    if choice is not None:
        mlflow.set_tag("source_choice", choice)
