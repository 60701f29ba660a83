"""The Great Expectations suite on real manifests, through a real GX Checkpoint."""

import pytest

from tasks.core.params import default_section
from tasks.data.datasets import prepare_dataset
from tasks.data.expectations import (
    ManifestCheck,
    ValidationFailed,
    raise_on_failure,
    validate_manifests,
)
from tasks.data.validation_report import domain_shift

pytestmark = pytest.mark.integration
CLASSES = tuple("0123456789")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    spec = default_section(
        "data.source", builtin="uci-digits", test_fraction=0.3, val_per_class=5, labels_per_class=5
    )
    return prepare_dataset(spec, 0, tmp_path_factory.mktemp("data") / "target")


def _check(frame, name="target", classes=CLASSES):
    return ManifestCheck(name, frame, classes, ("train", "test", "val"))


def test_good_manifest_passes_and_writes_data_docs(manifest, tmp_path):
    (report,) = validate_manifests([_check(manifest)], docs_dir=tmp_path / "docs")
    assert report.success and report.rows == len(manifest) and len(report.outcomes) >= 25
    raise_on_failure([report])
    index = (tmp_path / "docs" / "index.html").read_text()
    assert "target_manifest" in index


def test_missing_class_fails_naming_expectation_column_and_split(manifest):
    without_sevens = manifest[~((manifest["label"] == 7) & (manifest["split"] == "test"))]
    reports = validate_manifests([_check(without_sevens)])
    with pytest.raises(ValidationFailed) as err:
        raise_on_failure(reports)
    message = str(err.value)
    assert "target: expect_column_distinct_values_to_contain_set on column 'label'" in message
    assert "where split == 'test'" in message and "[7]" in message


def test_label_outside_class_set_and_nulls_fail(manifest):
    bad = manifest.copy()
    bad.loc[bad.index[:3], "label"] = 42
    bad.loc[bad.index[5], "path"] = None
    (report,) = validate_manifests([_check(bad, "source")])
    failed = {(o.expectation, o.column) for o in report.failures()}
    assert ("expect_column_values_to_be_in_set", "label") in failed
    assert ("expect_column_values_to_not_be_null", "path") in failed
    label = next(o for o in report.failures() if o.column == "label" and not o.where)
    assert "42" in label.observed and label.rows == list(bad["path"][:3])


def test_duplicate_across_splits_is_leakage_with_paths(manifest):
    bad = manifest.copy()
    train, test = bad.index[bad["split"] == "train"][0], bad.index[bad["split"] == "test"][0]
    bad.loc[test, "sha256"] = bad.loc[train, "sha256"]
    (report,) = validate_manifests([_check(bad)])
    failed = {o.key: o for o in report.failures()}
    leak = failed["expect_column_values_to_be_between:splits_with_same_image"]
    assert set(leak.rows) == {bad.loc[train, "path"], bad.loc[test, "path"]}
    assert "expect_column_values_to_be_unique:sha256" in failed


def test_bounds_on_size_and_intensity(manifest):
    bad = manifest.copy()
    bad.loc[bad.index[0], "width"] = 10_000
    bad.loc[bad.index[1], "std"] = 0.0  # a blank image
    settings = default_section("validation", min_images_per_class=200)
    (report,) = validate_manifests([_check(bad)], settings)
    failed = {o.key: o for o in report.failures()}
    assert failed["expect_column_values_to_be_between:width"].rows == [bad["path"].iloc[0]]
    assert failed["expect_column_values_to_be_between:std"].rows == [bad["path"].iloc[1]]
    assert "expect_column_values_to_be_between:images_in_class" in failed


def test_warn_only_downgrades_named_expectations(manifest):
    bad = manifest.copy()
    bad.loc[bad.index[1], "std"] = 0.0
    warn = ("expect_column_values_to_be_between:std",)
    (report,) = validate_manifests([_check(bad)], warn_only=warn)
    assert report.success and [o.key for o in report.warnings()] == list(warn)
    raise_on_failure([report])
    with pytest.raises(ValidationFailed, match="names no expectation of the suite: expect_nothing"):
        validate_manifests([_check(manifest)], warn_only=("expect_nothing",))


def test_target_classes_must_fit_the_label_space(manifest):
    (report,) = validate_manifests([_check(manifest, classes=tuple("012345678"))])
    failed = {o.key for o in report.failures()}
    assert {"expect_column_values_to_be_in_set:class_name"} <= failed


def test_wrong_columns_and_empty_manifest_fail(manifest):
    check = _check(manifest.drop(columns=["sha256"]).head(0))
    (report,) = validate_manifests([check])
    failed = {o.expectation for o in report.failures()}
    assert {"expect_table_columns_to_match_set", "expect_table_row_count_to_be_between"} <= failed


def test_domain_shift_is_measured(manifest):
    shifted = manifest.copy()
    shifted["mean"] = shifted["mean"] + 100
    assert domain_shift(manifest, manifest)["ks_mean"] == 0.0
    assert domain_shift(manifest, shifted)["ks_mean"] > 0.5
