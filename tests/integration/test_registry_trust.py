"""Trust under misuse, against a real SQLite registry and a real DVC repo: a model belongs to
one task, the gate compares only versions of one task on the champion's own target, a
``register`` outside the flow moves no alias, alias moves made around tlp are found by
``tlp audit``, and a lost store stops ``tlp run`` before any work."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main
from flows.promote import PromotionRefused, evaluate_gate, gate_and_promote
from tasks.data.manifest import read_manifest
from tasks.data.shards import export_images
from tasks.registry import aliases, frozen_target, identity
from tasks.registry.gate import load_test_split
from tests.registry_support import gate_params, open_store, register, register_project, run_register

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DIGITS = "tlp-uci-digits"  # params.yaml's registry.model_name: null, derived from uci-digits


@pytest.fixture(scope="module")
def project(gate_candidates, tmp_path_factory):
    """A DVC project with the uci-digits target and the strong candidate, version 1 of its
    derived model registered by the register stage outside the flow, and an ImageFolder of
    other digits (``inverted-digits``: a user's folder target)."""
    base = tmp_path_factory.mktemp("identity")
    project = register_project(base, gate_candidates.project, gate_candidates.strong)
    target = gate_candidates.project / "data" / "target"
    export_images(target, read_manifest(target), base / "files")  # files/images/<class>/...
    (base / "inverted-digits").symlink_to(base / "files" / "images")
    registration = run_register(project)
    return project, f"sqlite:///{base}/mlflow.db", registration


def _tlp(project, store: str, *args: str) -> int:
    return main(["-C", str(project), *args, "--set", f"storage.tracking_uri={store}"])


def test_register_outside_the_flow_records_the_task_and_moves_no_alias(project, caplog):
    project, _, registration = project
    assert registration["model_name"] == DIGITS and registration["aliases"] == []
    client = MlflowClient()
    tags = client.get_model_version(DIGITS, registration["version"]).tags
    assert tags[identity.OUTSIDE_FLOW] == "true"
    assert tags[identity.REGISTRATION] == identity.COMPLETE
    assert tags[identity.TASK_TARGET] == "builtin:uci-digits"
    assert json.loads(tags[identity.TASK_CLASSES]) == [str(i) for i in range(10)]
    model = client.get_registered_model(DIGITS)
    assert model.tags[identity.TASK_ID] == tags[identity.TASK_ID] and not model.aliases


def test_a_run_on_another_target_under_the_same_name_stops_before_any_work(project, capsys):
    project, store, _ = project
    folder = project.parent / "inverted-digits"
    code = _tlp(
        project, store, "run", "--set", f"data.target.path={folder}",
        "--set", f"registry.model_name={DIGITS}",
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"model '{DIGITS}' belongs to another task (10 classes" in err
    assert "of builtin:uci-digits), not this run's (10 classes" in err
    assert "--set registry.model_name=NEW" in err
    assert not (project / ".tlp" / "run.lock").exists()  # refused before the lock
    assert len(MlflowClient().search_model_versions(f"name='{DIGITS}'")) == 1


def test_a_run_on_another_target_registers_under_its_own_derived_name(project):
    project, _, _ = project
    folder = project.parent / "inverted-digits"
    registration = run_register(project, f"data.target.path={folder}")
    assert registration["model_name"] == "tlp-inverted-digits"
    tags = MlflowClient().get_registered_model("tlp-inverted-digits").tags
    assert tags[identity.TASK_TARGET] == f"folder:{folder.name}"
    assert (
        tags[identity.TASK_ID] != MlflowClient().get_registered_model(DIGITS).tags[identity.TASK_ID]
    )


def test_the_gate_never_compares_versions_of_different_tasks(project, gate_candidates):
    project, store, _ = project
    exp = open_store(store, project)
    name = "tlp-mixed"
    digits = identity.Task(tuple(str(i) for i in range(10)), "builtin:uci-digits")
    photos = identity.Task(tuple(str(i) for i in range(10)), "folder:other")
    champion = register(gate_candidates.weak, project, exp, name)
    candidate = register(gate_candidates.strong, project, exp, name)
    for version, task in ((champion, digits), (candidate, photos)):
        for key, value in {**task.tags(), identity.REGISTRATION: identity.COMPLETE}.items():
            MlflowClient().set_model_version_tag(name, version, key, value)
    MlflowClient().set_registered_model_alias(name, "champion", champion)
    outcome = gate_and_promote(project, gate_params(), name, candidate)
    assert not outcome["promoted"] and "belong to different tasks" in outcome["reason"]
    with pytest.raises(PromotionRefused, match="never compared"):
        gate_and_promote(project, gate_params(), name, candidate, "why", force=True, manual=True)
    assert aliases.alias_version(name, "champion") == champion


def _commit_target(project) -> str:
    """data/target in dvc.lock and the DVC cache, as the prepare stage leaves it."""
    import shutil

    from tasks.core import versioning
    from tasks.core.params import resolve_params, write_resolved

    shutil.copytree(project / "data" / "target", project / "data" / "source")
    write_resolved(resolve_params(project / "params.yaml"), project)
    versioning.commit_stage(project, "prepare")
    return versioning.output_hashes(project)["data/target"]


def test_the_gate_scores_on_the_champions_own_target_not_the_workspace(project, gate_candidates):
    import pandas as pd

    project, store, _ = project
    exp = open_store(store, project)
    digest = _commit_target(project)
    name = "tlp-frozen"
    champion = register(gate_candidates.weak, project, exp, name)
    candidate = register(gate_candidates.strong, project, exp, name)
    MlflowClient().set_model_version_tag(name, champion, "dvc.data/target", digest)
    params = gate_params()
    before = evaluate_gate(project, params, name, candidate, champion)
    manifest = project / "data" / "target" / "manifest.parquet"
    changed = pd.read_parquet(manifest)
    changed["class_name"] = changed["class_name"].sample(frac=1.0, random_state=0).to_numpy()
    changed.to_parquet(manifest)  # another data/target in the workspace: labels shuffled
    after = evaluate_gate(project, params, name, candidate, champion)
    frozen = frozen_target.materialize(project, digest, project.parent / "frozen")
    held = sorted(str(p.relative_to(frozen)) for p in frozen.rglob("*") if p.is_file())
    assert held == ["manifest.parquet", "shards/test-000.parquet"]  # only what the gate reads
    assert len(load_test_split(frozen).images) == after.n
    assert before.n == after.n > 0 and before.candidate_accuracy > 0.5
    assert (after.candidate_accuracy, after.champion_accuracy) == (
        before.candidate_accuracy,
        before.champion_accuracy,
    )
    MlflowClient().set_model_version_tag(name, champion, "dvc.data/target", "0" * 32 + ".dir")
    missing = evaluate_gate(project, params, name, candidate, champion)
    assert not missing.promote and missing.reason.startswith("champion kept: the champion's")
    assert "0" * 32 in missing.reason


def test_tlp_audit_finds_a_ui_alias_move_records_it_then_agrees(project, gate_candidates, capsys):
    from tasks.registry import audit

    project, store, _ = project
    exp = open_store(store, project)
    name = "tlp-audited"
    first = register(gate_candidates.weak, project, exp, name)
    second = register(gate_candidates.strong, project, exp, name)
    aliases.move_champion(project, name, first, None, "manual-promote", "first")
    assert _tlp(project, store, "audit", "--model", name) == 0
    capsys.readouterr()
    MlflowClient().set_registered_model_alias(name, "champion", second)  # the UI's alias editor
    assert _tlp(project, store, "audit", "--model", name, "--json") == 1
    found = json.loads(capsys.readouterr().out)["findings"]
    assert [(f["alias"], f["from_version"], f["to_version"]) for f in found] == [
        ("champion", first, second)
    ]
    last = audit.read_events(project, name)[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == (
        "outside-tlp",
        first,
        second,
    )
    assert "not gated" in MlflowClient().get_model_version(name, second).tags["tlp.outside_move"]
    assert _tlp(project, store, "audit", "--model", name) == 0


def test_a_version_cut_short_is_flagged_incomplete_and_never_gated(project, gate_candidates):
    """What a kill -9 between registering and the last tag leaves: a version of a task-bound
    model without ``tlp.registration``."""
    from tasks.registry.reconcile import reconcile

    project, store, _ = project
    exp = open_store(store, project)
    cut = register(gate_candidates.strong, project, exp, DIGITS)  # no tags: killed right after
    found = reconcile(project, DIGITS, ("challenger", "champion", "previous_champion"))
    assert [f.to_version for f in found if f.kind == "incomplete-registration"] == [cut]
    tags = MlflowClient().get_model_version(DIGITS, cut).tags
    assert tags[identity.REGISTRATION] == identity.INCOMPLETE
    outcome = gate_and_promote(project, gate_params(), DIGITS, cut)
    assert not outcome["promoted"] and "incomplete registration" in outcome["reason"]


def test_a_lost_store_stops_the_run_before_any_work(project, capsys, tmp_path):
    """``rm mlflow.db`` after a run, or a store replaced by an empty one: the next ``tlp run``
    stops; ``--new-store`` goes on (here to the next check, the task's, to stay cheap)."""
    from tasks.core import stores

    project, store, _ = project
    gone = tmp_path / "mlflow.db"
    record = project / stores.RECORD
    last = {"experiment_id": "1", "model_name": DIGITS, "last_version": "3"}
    record.write_text(json.dumps({**last, "tracking_uri": f"sqlite:///{gone}"}))
    try:
        assert _tlp(project, f"sqlite:///{gone}", "run") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tlp: run stopped before any work: storage.tracking_uri: the")
        assert f"MLflow store {gone} is gone" in err and "--new-store" in err
        assert not gone.exists()  # nothing created it
        record.write_text(json.dumps({**last, "tracking_uri": store, "experiment_id": "999"}))
        assert _tlp(project, store, "run") == 2
        assert "no longer holds experiment 999" in capsys.readouterr().err
        folder = project.parent / "inverted-digits"
        other = ["--set", f"data.target.path={folder}", "--set", f"registry.model_name={DIGITS}"]
        assert _tlp(project, store, "run", "--new-store", *other) == 2
        assert "belongs to another task" in capsys.readouterr().err  # past the store check
    finally:
        record.unlink()
        mlflow.set_tracking_uri(store)
