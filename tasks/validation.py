"""Great Expectations 1.x suites on dataset manifests, run through a GX Checkpoint.

A failed expectation stops the pipeline at ``validate`` with a message naming the
dataset, the expectation, the column and a few offending values.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import pandas as pd

from tasks.datasets import MANIFEST_COLUMNS, SPLITS


class ValidationFailed(RuntimeError):
    """A dataset did not meet its expectations; nothing downstream may run."""


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str = ""


@dataclass
class DatasetReport:
    dataset: str
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def _expectations(classes: list[int]) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("path", "label", "split")],
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]


def _observed(result: dict) -> str:
    for key in ("partial_unexpected_list", "observed_value", "details"):
        value = result.get(key)
        if value not in (None, [], {}):
            return str(value[:5] if isinstance(value, list) else value)[:200]
    return ""


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_manifests(manifests: dict[str, tuple[pd.DataFrame, list[int]]]) -> list[DatasetReport]:
    """Validate each ``name -> (manifest, expected class labels)`` with one GX Checkpoint."""
    import great_expectations as gx

    context = _context()
    definitions, frames = [], {}
    for name, (manifest, classes) in manifests.items():
        asset = context.data_sources.add_pandas(name).add_dataframe_asset("manifest")
        batch = asset.add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_manifest"))
        for expectation in _expectations(classes):
            suite.add_expectation(expectation)
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )
        )
        frames[name] = manifest
    reports = []
    for definition in definitions:  # one batch per dataset; the checkpoint runs its suite
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name=f"{definition.name}_checkpoint", validation_definitions=[definition])
        )
        result = checkpoint.run(batch_parameters={"dataframe": frames[definition.name]})
        suite_result = next(iter(result.run_results.values()))
        outcomes = [
            ExpectationOutcome(
                r.expectation_config.type,
                r.expectation_config.kwargs.get("column"),
                r.success,
                "" if r.success else _observed(r.result),
            )
            for r in suite_result.results
        ]
        reports.append(
            DatasetReport(definition.name, result.success, len(frames[definition.name]), outcomes)
        )
    return reports


def raise_on_failure(reports: list[DatasetReport]) -> None:
    problems = [
        f"{r.dataset}: {o.expectation}"
        + (f" on column '{o.column}'" if o.column else "")
        + (f" (observed {o.observed})" if o.observed else "")
        for r in reports
        for o in r.failures()
    ]
    if problems:
        raise ValidationFailed("data validation failed: " + "; ".join(problems))


def run(ctx) -> dict:
    """Stage ``validate``: GX on both manifests; any failed expectation stops the pipeline."""
    from tasks import tracking
    from tasks.context import write_json
    from tasks.datasets import read_classes, read_manifest

    layout = ctx.layout
    manifests = {
        role: (read_manifest(directory), list(range(len(read_classes(directory)))))
        for role, directory in (("source", layout.source_data), ("target", layout.target_data))
    }
    with tracking.child_run("validate", ctx.experiment_id, ctx.parent_run_id):
        reports = validate_manifests(manifests)
        summary = {
            r.dataset: {
                "success": r.success,
                "rows": r.rows,
                "expectations": len(r.outcomes),
                "failed": [f"{o.expectation}:{o.column}" for o in r.failures()],
            }
            for r in reports
        }
        tracking.log_metrics({f"{name}_valid": float(s["success"]) for name, s in summary.items()})
        write_json(layout.validation_report, summary)
    raise_on_failure(reports)
    return summary
