"""The Great Expectations suite on real manifests, through a real GX Checkpoint."""

import pytest

from tasks.datasets import prepare_dataset
from tasks.params import DatasetParams
from tasks.validation import ValidationFailed, raise_on_failure, validate_manifests

pytestmark = pytest.mark.integration
CLASSES = list(range(10))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    spec = DatasetParams(
        builtin="uci-digits", test_fraction=0.3, val_per_class=5, labels_per_class=5
    )
    return prepare_dataset(spec, 0, tmp_path_factory.mktemp("data") / "target")


def test_good_manifest_passes(manifest):
    (report,) = validate_manifests({"target": (manifest, CLASSES)})
    assert report.success and report.rows == len(manifest) and len(report.outcomes) >= 7
    raise_on_failure([report])


def test_missing_class_fails_naming_expectation_and_column(manifest):
    without_sevens = manifest[manifest["label"] != 7]
    reports = validate_manifests({"target": (without_sevens, CLASSES)})
    with pytest.raises(ValidationFailed) as err:
        raise_on_failure(reports)
    message = str(err.value)
    assert "target: expect_column_distinct_values_to_contain_set on column 'label'" in message


def test_label_outside_class_set_and_nulls_fail(manifest):
    bad = manifest.copy()
    bad.loc[bad.index[:3], "label"] = 42
    bad.loc[bad.index[5], "path"] = None
    (report,) = validate_manifests({"source": (bad, CLASSES)})
    failed = {(o.expectation, o.column) for o in report.failures()}
    assert ("expect_column_values_to_be_in_set", "label") in failed
    assert ("expect_column_values_to_not_be_null", "path") in failed
    assert "42" in next(o.observed for o in report.failures() if o.column == "label")


def test_wrong_columns_and_empty_manifest_fail(manifest):
    (report,) = validate_manifests({"target": (manifest.drop(columns=["sha256"]).head(0), CLASSES)})
    failed = {o.expectation for o in report.failures()}
    assert {"expect_table_columns_to_match_set", "expect_table_row_count_to_be_between"} <= failed
