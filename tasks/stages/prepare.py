"""Stage ``prepare``: source and target as a few shard files plus a manifest each (``data/``)."""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.core import tracking
from tasks.core.context import StageContext
from tasks.data.datasets import prepare_dataset
from tasks.data.folders import folder_fingerprint
from tasks.data.manifest import describe_spec, read_info

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Stage ``prepare``: materialise source and target as shards plus a manifest each."""
    p, layout = ctx.params, ctx.layout
    counts = {}
    with tracking.child_run("prepare", ctx.experiment_id, ctx.parent_run_id):
        for role, spec, out in (
            ("source", p.data.source, layout.source_data),
            ("target", p.data.target, layout.target_data),
        ):
            manifest = prepare_dataset(
                spec, p.data.split_seed, out, role, p.data.max_image_pixels, ctx.project_dir
            )
            counts[role] = manifest["split"].value_counts().to_dict()
            info = read_info(out)
            counts[f"{role}_skipped_files"] = len(info["skipped"])
            counts[f"{role}_shards"] = len(info["shards"])
            tracking.log_metrics({f"{role}_{split}_images": n for split, n in counts[role].items()})
            tracking.log_metrics(
                {
                    f"{role}_skipped_files": counts[f"{role}_skipped_files"],
                    f"{role}_shards": counts[f"{role}_shards"],
                }
            )
            tracking.log_params({f"{role}.dataset": describe_spec(spec)})
            splits = ", ".join(f"{n} {split}" for split, n in sorted(counts[role].items()))
            log.info(
                "prepare: %s %s: %s images in %d shard(s)",
                role,
                describe_spec(spec),
                splits,
                counts[f"{role}_shards"],
            )
    return counts


def still_valid(ctx: StageContext) -> bool:
    """DVC cannot see a user's folder outside the project: rebuild when its files changed,
    and when a dataset was prepared before its images were stored as shards (no
    ``shards`` in its info file: the older one-file-per-image layout)."""
    layout = ctx.layout
    for out in (layout.source_data, layout.target_data):
        try:
            info = read_info(out)
        except (OSError, ValueError):
            return False
        source = info.get("source", {})
        if "shards" not in info:
            return False
        if "path" in source:
            root = Path(source["path"])
            if not root.is_dir() or folder_fingerprint(root) != source.get("fingerprint"):
                return False
    return True
