"""Bad registry requests get one clear error naming the problem, and change nothing."""

import pytest

from flows.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path, project_root):
    (tmp_path / "params.yaml").write_text((project_root / "params.yaml").read_text())
    return tmp_path


def run(project, capsys, *args):
    code = main(["-C", str(project), *args])
    return code, capsys.readouterr().err


def test_malformed_reference_is_named(project, capsys):
    code, err = run(project, capsys, "lineage", "tlp-uci-digits")
    assert code == 1 and "'tlp-uci-digits': expected NAME@ALIAS or NAME/VERSION" in err


def test_unknown_model_is_named(project, capsys):
    code, err = run(project, capsys, "lineage", "nope@champion")
    assert code == 1 and "nope@champion: not in the registry" in err
    code, err = run(project, capsys, "promote", "nope", "3", "--reason", "x")
    assert code == 1 and "nope has no version 3" in err


def test_rollback_without_a_previous_champion_is_refused(project, capsys):
    code, err = run(project, capsys, "rollback", "nope")
    assert code == 1 and "nothing to roll back to" in err
    assert not (project / ".tlp" / "alias-events.jsonl").exists()
