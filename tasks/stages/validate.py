"""Stage ``validate``: Great Expectations on both manifests; a failed expectation stops the run."""

from __future__ import annotations

import hashlib
import logging

import mlflow

from tasks.core import tracking
from tasks.core.context import StageContext, write_json
from tasks.data.expectations import checks_for, raise_on_failure, validate_manifests
from tasks.data.manifest import read_info
from tasks.data.mlflow_datasets import ALL, log_splits
from tasks.data.validation_report import (
    domain_shift,
    plot_domain_shift,
    publish_markdown,
    summary_markdown,
)

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Stage ``validate``: GX on both manifests; any failed expectation stops the pipeline."""
    layout, settings = ctx.layout, ctx.params.validation
    checks = checks_for(ctx)
    docs = layout.data_docs
    with tracking.child_run("validate", ctx.experiment_id, ctx.parent_run_id):
        log_splits(ctx.project_dir, ALL)  # every split of both is checked
        reports = validate_manifests(checks, settings, docs, settings.warn_only)
        try:  # reported, never failed; a broken manifest is GX's to name, not scipy's
            shift = domain_shift(checks[0].manifest, checks[1].manifest)
            plot_domain_shift(checks[0].manifest, checks[1].manifest, docs / "domain_shift.png")
        except (KeyError, ValueError, TypeError) as exc:
            shift = {"ks_mean": None, "ks_std": None, "error": f"not measured ({exc})"}
        summary = {
            r.dataset: {
                "success": r.success,
                "rows": r.rows,
                "expectations": len(r.outcomes),
                "failed": [o.key for o in r.failures()],
                "warned": [o.key for o in r.warnings()],
                "skipped_files": len(read_info(directory)["skipped"]),
            }
            for r, directory in zip(reports, (layout.source_data, layout.target_data), strict=True)
        }
        summary["domain_shift"] = shift
        summary["data_docs"] = str(docs.relative_to(ctx.project_dir) / "index.html")
        valid = {f"{r.dataset}_valid": float(r.success) for r in reports}
        ks = {
            f"domain_shift_{k}": v
            for k, v in shift.items()
            if k.startswith("ks_") and v is not None
        }
        tracking.log_metrics({**valid, **ks})
        mlflow.log_artifacts(str(docs), "data_docs")  # into this stage's child run
        write_json(layout.validation_report, summary)
        write_json(layout.pretrain_inputs, pretrain_inputs(ctx, summary))
        publish_markdown(summary_markdown(summary, docs / "index.html"))
    raise_on_failure(reports)
    for name in ("source", "target"):
        s = summary[name]
        log.info(
            "validate: %s: %d images, %d expectations passed%s",
            name,
            s["rows"],
            s["expectations"],
            f" (warned: {', '.join(s['warned'])})" if s["warned"] else "",
        )
    return summary


def pretrain_inputs(ctx: StageContext, summary: dict) -> dict:
    """What the pretrain stage depends on (dvc.yaml): the source's validation outcome only,
    so that a change of the target alone leaves the source model up to date. With
    ``transfer.source: auto`` the source is chosen by ranking candidates on the target,
    so the target's identity (its manifest's hash: every image's hash, split and label) is
    part of it too, and a new target reruns the choice. So it is with a self-supervised
    ``pretrain.objective``: it may learn from the target's images (``pretrain.images``) and
    its kNN monitor reads the target's train and val splits."""
    from tasks.core.params import SELF_SUPERVISED

    p = ctx.params
    inputs = {"source": summary["source"]}
    if p.transfer.source == "auto" or p.pretrain.objective in SELF_SUPERVISED:
        from tasks.data.manifest import MANIFEST

        manifest = ctx.layout.target_data / MANIFEST
        inputs["target_manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return inputs
