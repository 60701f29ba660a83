"""Great Expectations 1.x suites on dataset manifests, run through GX Checkpoints, with Data Docs.

A failed expectation stops the pipeline at ``validate`` with a message naming the dataset, the
expectation, the column and a few offending rows (their paths). ``validation.warn_only`` names
expectations (``type`` or ``type:column``) that are reported but do not fail. The domain shift
between source and target is measured and reported, never failed (``validation_report``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.data.manifest import MANIFEST_COLUMNS, SHARD_COLUMNS, SPLITS

# Columns derived from the manifest before validation, so GX can check per-class counts and
# cross-split leakage as plain column expectations (with the offending paths in the result).
DERIVED_COLUMNS = ("images_in_class", "splits_with_same_image")
SHOWN_ROWS = 5


class ValidationFailed(RuntimeError):
    """A dataset did not meet its expectations; nothing downstream may run."""


@dataclass(frozen=True)
class ManifestCheck:
    """One manifest and what it must satisfy."""

    name: str
    manifest: pd.DataFrame
    label_space: tuple[str, ...]
    required_splits: tuple[str, ...] = ("train", "test")
    shards: tuple[str, ...] | None = None  # the shard files found; None: no image check
    min_classes: int = 2  # 1: an unlabelled folder (self-supervised pretraining, no classifier)


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str = ""
    where: str = ""  # the row condition, e.g. "split == 'test'"
    rows: list[str] = field(default_factory=list)  # paths of a few offending rows
    warned: bool = False  # failed, but downgraded by validation.warn_only

    @property
    def key(self) -> str:
        return f"{self.expectation}:{self.column}" if self.column else self.expectation

    def describe(self) -> str:
        text = self.expectation + (f" on column '{self.column}'" if self.column else "")
        text += f" where {self.where}" if self.where else ""
        text += f" (observed {self.observed})" if self.observed else ""
        return text + (f"; offending rows: {', '.join(self.rows)}" if self.rows else "")


@dataclass
class DatasetReport:
    dataset: str
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and not o.warned]

    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.warned]


def with_derived_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest plus per-row counts GX can bound: class size, and splits sharing an image."""
    frame = manifest.copy()
    if "label" in frame:
        frame["images_in_class"] = frame.groupby("label", dropna=False)["label"].transform("size")
    if {"sha256", "split"} <= set(frame.columns):
        frame["splits_with_same_image"] = frame.groupby("sha256", dropna=False)["split"].transform(
            "nunique"
        )
    return frame


def build_expectations(check: ManifestCheck, bounds) -> list:
    """The suite for one manifest; ``bounds`` is the ``validation`` params section."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    labels = list(range(len(check.label_space)))
    low, high = bounds.mean_intensity
    side = {"min_value": bounds.min_side, "max_value": bounds.max_side}
    columns = [*MANIFEST_COLUMNS, *SHARD_COLUMNS]
    stored = []  # every image sits in a shard file of the dataset, at a row of its own
    if check.shards is not None:
        stored = [
            gxe.ExpectColumnValuesToBeInSet(column="shard", value_set=list(check.shards)),
            gxe.ExpectColumnValuesToBeBetween(column="row", min_value=0),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(SHARD_COLUMNS)),
        ]
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*columns, *DERIVED_COLUMNS], exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns],
        *stored,
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        # the classes fit the configured label space (names and label indices)
        gxe.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(check.label_space)),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
        # a classifier needs two classes: a one-class dataset trains a constant
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="class_name", min_value=check.min_classes
        ),
        *[
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="label", value_set=labels, row_condition=Column(name="split") == split
            )
            for split in check.required_splits
        ],
        gxe.ExpectColumnValuesToBeBetween(
            column="images_in_class", min_value=bounds.min_images_per_class
        ),
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),  # duplicates
        gxe.ExpectColumnValuesToBeBetween(  # the same image in two splits: leakage
            column="splits_with_same_image", min_value=1, max_value=1
        ),
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToBeBetween(column="width", **side),
        gxe.ExpectColumnValuesToBeBetween(column="height", **side),
        gxe.ExpectColumnValuesToBeBetween(column="channels", min_value=1, max_value=4),
        gxe.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="mean", min_value=low, max_value=high),
        gxe.ExpectColumnValuesToBeBetween(column="std", min_value=bounds.min_intensity_std),
    ]


def _short(value) -> object:
    return value[:12] + "..." if isinstance(value, str) and len(value) > 16 else value


def _observed(result: dict) -> str:
    for key in ("partial_missing_list", "partial_unexpected_list", "observed_value", "details"):
        value = result.get(key)
        if value not in (None, [], {}):
            if isinstance(value, list):  # distinct values, shortened: hashes are long
                distinct = dict.fromkeys(
                    v if isinstance(v, (str, int, float)) else str(v) for v in value
                )
                value = [_short(v) for v in distinct][:SHOWN_ROWS]
            return str(value)[:200]
    return ""


def _offending_rows(result: dict) -> list[str]:
    rows = result.get("partial_unexpected_index_list") or []
    return [str(r.get("path")) for r in rows[:SHOWN_ROWS] if isinstance(r, dict)]


def _where(kwargs: dict) -> str:
    cond = kwargs.get("row_condition")
    if isinstance(cond, dict) and "column" in cond:
        return f"{cond['column'].get('name')} {cond.get('operator')} {cond.get('parameter')!r}"
    return str(cond) if cond else ""


def _context(docs_dir: Path | None):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            "tlp",
            {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
            },
        )
    return context


def validate_manifests(
    checks: list[ManifestCheck],
    bounds=None,
    docs_dir: Path | None = None,
    warn_only: tuple[str, ...] = (),
) -> list[DatasetReport]:
    """Run each manifest's suite through a GX Checkpoint; Data Docs go to ``docs_dir`` if given."""
    import great_expectations as gx

    from tasks.core.params import default_section

    bounds = bounds or default_section("validation")
    if docs_dir is not None and docs_dir.exists():
        shutil.rmtree(docs_dir)  # docs of this run only
    context = _context(docs_dir)
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["tlp"])]
    reports = []
    for check in checks:
        asset = context.data_sources.add_pandas(check.name).add_dataframe_asset("manifest")
        batch = asset.add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{check.name}_manifest"))
        for expectation in build_expectations(check, bounds):
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=check.name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{check.name}_checkpoint",
                validation_definitions=[definition],
                actions=actions if docs_dir is not None else [],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": ["path"],
                },
            )
        )
        frame = with_derived_columns(check.manifest)
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        suite_result = next(iter(result.run_results.values()))
        outcomes = [_outcome(r, warn_only) for r in suite_result.results]
        success = not any(not o.success and not o.warned for o in outcomes)
        reports.append(DatasetReport(check.name, success, len(check.manifest), outcomes))
    _check_warn_only(warn_only, reports)
    if docs_dir is not None:
        from tasks.data.data_docs import make_self_contained

        make_self_contained(docs_dir)  # no CDN: readable offline and in MLflow's viewer
    return reports


def _outcome(r, warn_only: tuple[str, ...]) -> ExpectationOutcome:
    kwargs = r.expectation_config.kwargs
    outcome = ExpectationOutcome(
        r.expectation_config.type,
        kwargs.get("column"),
        bool(r.success),
        "" if r.success else _observed(r.result),
        _where(kwargs),
        [] if r.success else _offending_rows(r.result),
    )
    outcome.warned = not outcome.success and (
        outcome.key in warn_only or outcome.expectation in warn_only
    )
    return outcome


def _check_warn_only(warn_only: tuple[str, ...], reports: list[DatasetReport]) -> None:
    known = {k for r in reports for o in r.outcomes for k in (o.key, o.expectation)}
    unknown = [w for w in warn_only if w not in known]
    if unknown and reports:
        raise ValidationFailed(
            f"validation.warn_only names no expectation of the suite: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


def raise_on_failure(reports: list[DatasetReport]) -> None:
    problems = [f"{r.dataset}: {o.describe()}" for r in reports for o in r.failures()]
    if problems:
        raise ValidationFailed("data validation failed: " + "; ".join(problems))


def checks_for(ctx) -> list[ManifestCheck]:
    from tasks.data.manifest import read_classes, read_manifest
    from tasks.data.shards import SHARD_DIR

    layout, data = ctx.layout, ctx.params.data
    checks = []
    for role, directory, spec in (
        ("source", layout.source_data, data.source),
        ("target", layout.target_data, data.target),
    ):
        splits = ("train", "test", "val") if spec.val_per_class else ("train", "test")
        shards = tuple(
            sorted(
                p.relative_to(directory).as_posix()
                for p in (directory / SHARD_DIR).glob("*.parquet")
            )
        )
        checks.append(
            ManifestCheck(
                role,
                read_manifest(directory),
                read_classes(directory),
                splits,
                shards,
                min_classes=1 if spec.unlabeled else 2,
            )
        )
    return checks
