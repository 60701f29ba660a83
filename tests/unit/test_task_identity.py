"""A registered model belongs to one task: the derived model name, the task id and the
one-line conflict message (tasks/core/params/tree.py, tasks/registry/identity.py)."""

from __future__ import annotations

import pytest
import yaml

from tasks.core.params import resolve_params
from tasks.core.params.tree import derived_model_name
from tasks.registry.identity import Task, conflict, from_tags
from tests.conftest import ROOT

DIGITS = Task(tuple("0123456789"), "builtin:uci-digits")


@pytest.mark.parametrize(
    ("builtin", "path", "name"),
    [
        ("uci-digits", None, "tlp-uci-digits"),
        ("fashion-mnist", None, "tlp-fashion-mnist"),
        (None, "~/data/Inverted Digits/", "tlp-inverted-digits"),
        (None, "/srv/x/photos_2024:v1", "tlp-photos-2024-v1"),
    ],
)
def test_the_model_name_is_derived_from_the_target(builtin, path, name):
    assert derived_model_name(builtin, path) == name


def test_params_resolve_a_null_model_name_to_the_targets_and_keep_a_set_one(tmp_path):
    params_file = ROOT / "params.yaml"
    assert resolve_params(params_file).registry.model_name == "tlp-uci-digits"
    folder = tmp_path / "inverted-digits"
    switched = resolve_params(params_file, overrides=[f"data.target.path={folder}"])
    assert switched.registry.model_name == "tlp-inverted-digits"
    named = resolve_params(params_file, overrides=["registry.model_name=mine"])
    assert named.registry.model_name == "mine"
    # a profile that names its model keeps it (resolving `pretrained` would import timm)
    profile = yaml.safe_load(params_file.read_text())["profiles"]["pretrained"]
    assert profile["registry"]["model_name"] == "tlp-fashion"


def test_the_task_id_depends_on_classes_their_order_and_the_target():
    assert DIGITS.id == Task(tuple("0123456789"), "builtin:uci-digits").id
    assert DIGITS.id != Task(tuple("1023456789"), "builtin:uci-digits").id
    assert DIGITS.id != Task(tuple("0123456789"), "folder:inverted").id
    assert from_tags(DIGITS.tags()) == DIGITS and from_tags({}) is None


def test_a_model_of_another_task_is_named_with_both_tasks_and_the_fix():
    photos = Task(("cat", "dog", "owl"), "folder:photos")
    said = conflict("tlp-uci-digits", photos, DIGITS.tags(), versions=2)
    assert said.startswith("registry.model_name: model 'tlp-uci-digits' belongs to another task")
    assert "10 classes" in said and "3 classes ('cat', 'dog', 'owl') of folder:photos" in said
    assert "--set registry.model_name=NEW" in said and "\n" not in said
    assert said.endswith("or leave registry.model_name null to register under tlp-photos")
    assert conflict("tlp-uci-digits", DIGITS, DIGITS.tags(), versions=2) is None


def test_a_model_without_task_tags_is_adopted_only_without_versions():
    assert conflict("old", DIGITS, {}, versions=0) is None
    said = conflict("old", DIGITS, {}, versions=3)
    assert "3 version(s) registered before tlp recorded tasks" in said
    assert "treated as another task" in said and f"tlp.task.id={DIGITS.id}" in said
    assert conflict("old", DIGITS, {"tlp.task.id": DIGITS.id}, versions=3) is None  # adopted
