"""``transfer.source: auto`` (stage pretrain): rank ``rank.candidates`` on the target and
keep the top one as ``models/source``; the choice goes stale when the target changes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tasks.core.context import StageContext, read_json, write_json
from tasks.transferability.ranking import log_ranking, rank_candidates
from tasks.transferability.sources import SourceError, load_source
from tasks.transferability.tables import ranking_markdown


def target_fingerprint(target_dir: Path) -> str:
    from tasks.data.manifest import MANIFEST

    return hashlib.sha256((target_dir / MANIFEST).read_bytes()).hexdigest()[:16]


def select_source(ctx: StageContext) -> dict:
    """Rank ``rank.candidates`` on the target and copy the top one to ``models/source``."""
    from tasks.core import tracking
    from tasks.data.mlflow_datasets import log_splits
    from tasks.modeling.models import save_checkpoint

    p, layout = ctx.params, ctx.layout
    # pretraining a candidate opens runs of its own under the parent: rank first, then log
    rows = rank_candidates(ctx, p.rank.candidates, layout.target_data)
    top = rows[0]
    if top.get(p.rank.score) is None:
        raise SourceError(f"rank.score {p.rank.score}: no candidate could be scored by it")
    with tracking.child_run("pretrain/rank", ctx.experiment_id, ctx.parent_run_id):
        log_splits(ctx.project_dir, {"target": ("train",)})  # what the candidates are scored on
        markdown = ranking_markdown(rows, p.rank.score, f"{layout.target_data} (train split)")
        log_ranking(rows, p.rank.score, markdown, choice=top["candidate"])
    spec = next(s for s in p.rank.candidates if s.name == top["candidate"])
    chosen = load_source(ctx, spec)  # already built or downloaded: a reload, no training
    if layout.source_model.exists():
        shutil.rmtree(layout.source_model)
    card = chosen.card.model_copy(update={"strategy": "source"})
    save_checkpoint(chosen.model, card, layout.source_model)
    result = {
        "source": "auto",
        "chosen": top["candidate"],
        "score": p.rank.score,
        "target_fingerprint": target_fingerprint(layout.target_data),
        "ranking": rows,
    }
    write_json(layout.pretrain_report, result)
    return result


def still_valid(ctx: StageContext) -> bool:
    """An auto-chosen source is stale when the target it was ranked on changed (DVC does not
    see that: data/target is not a dependency of pretrain, so the default pipeline does not
    retrain its source when only the target changes)."""
    if ctx.params.transfer.source != "auto":
        return True
    try:
        report = read_json(ctx.layout.pretrain_report)
    except (OSError, ValueError):
        return False
    return report.get("target_fingerprint") == target_fingerprint(ctx.layout.target_data)
