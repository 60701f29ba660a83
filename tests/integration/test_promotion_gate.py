"""The promotion gate and alias moves against a real MLflow registry (SQLite in a temp dir),
with real registered models: a trained resnet10t (strong) and an untrained one (weak)."""

from __future__ import annotations

import shutil
import threading

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main
from flows.promote import PromotionRefused, gate_and_promote
from tasks.registry import aliases, audit
from tests.conftest import ROOT
from tests.registry_support import MODEL, gate_params, open_store, register

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(gate_candidates, tmp_path_factory):
    """A fresh registry with weak (v1), strong (v2), strong again (v3) and weak again (v4)."""
    base = tmp_path_factory.mktemp("gate-store")
    project = base / "project"
    shutil.copytree(gate_candidates.project, project)
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    uri = f"sqlite:///{base}/mlflow.db"
    exp = open_store(uri, project)
    c = gate_candidates
    versions = [register(ckpt, project, exp) for ckpt in (c.weak, c.strong, c.strong, c.weak)]
    assert versions == ["1", "2", "3", "4"]
    return project, uri


def _history(version: str) -> str:
    run_id = MlflowClient().get_model_version(MODEL, version).run_id
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{aliases.HISTORY_ARTIFACT}")


def champion() -> str | None:
    return aliases.alias_version(MODEL, "champion")


def tags(version: str) -> dict:
    return MlflowClient().get_model_version(MODEL, version).tags


def test_1_absolute_minimum_then_first_champion(store):
    project, _ = store
    low = gate_and_promote(project, gate_params(), MODEL, "1")
    assert not low["promoted"] and "below the minimum" in low["reason"] and champion() is None
    assert tags("1")["gate.decision"] == "keep"
    first = gate_and_promote(project, gate_params(min_accuracy=0.0), MODEL, "1")
    assert first["promoted"] and champion() == "1"
    assert "no champion yet" in first["reason"]


def test_2_better_model_is_promoted_with_its_evidence_recorded(store):
    project, _ = store
    outcome = gate_and_promote(project, gate_params(), MODEL, "2")
    assert outcome["promoted"] and not outcome["forced"] and champion() == "2"
    assert aliases.alias_version(MODEL, "previous_champion") == "1"
    t = tags("2")
    assert t["gate.decision"] == "promote" and float(t["gate.p_value"]) < 1e-6
    assert float(t["gate.candidate_accuracy"]) > 0.5 > float(t["gate.champion_accuracy"])
    assert t["gate.champion_version"] == "1" and t["gate.reason"].startswith("gain +")
    events = audit.read_events(project, MODEL)
    move = [e for e in events if e["alias"] == "champion"][-1]
    assert (move["from_version"], move["to_version"], move["action"]) == ("1", "2", "gate-promote")
    assert move["gate"]["p_value"] < 1e-6 and move["actor"] and move["when"]
    line = t[f"alias_event.{move['seq']:06d}"]  # a line a person reads on the version's page
    assert line.startswith("gate-promote: @champion 1 -> 2 by ") and "{" not in line
    recorded = audit.registry_events(t, MODEL)
    assert any(e["to_version"] == "2" and e["alias"] == "champion" for e in recorded)
    history = _history("2")  # the readable history on the version's run
    assert "gate-promote | @champion | 1 -> 2" in history and "newest candidate" not in history


def test_3_equal_model_is_not_promoted(store):
    project, _ = store
    outcome = gate_and_promote(project, gate_params(), MODEL, "3")  # same weights as v2
    assert not outcome["promoted"] and champion() == "2"
    assert outcome["gate"]["p_value"] == 1.0 and tags("3")["gate.decision"] == "keep"


def test_4_worse_model_is_not_promoted(store):
    project, _ = store
    outcome = gate_and_promote(project, gate_params(min_accuracy=0.0), MODEL, "4")
    assert not outcome["promoted"] and champion() == "2" and "not better" in outcome["reason"]
    with pytest.raises(PromotionRefused, match="--force"):
        gate_and_promote(project, gate_params(), MODEL, "4", "try", manual=True)
    assert champion() == "2"


def test_5_forced_promotion_is_recorded(store, capsys, monkeypatch):
    project, uri = store
    monkeypatch.setenv("TLP_ACTOR", "alice")
    args = ["-C", str(project), "promote", MODEL, "4", "--reason", "demo of a forced move"]
    args += ["--set", f"storage.tracking_uri={uri}"]
    assert main(args) == 1  # the gate refuses without --force
    assert "gate refused" in capsys.readouterr().err and champion() == "2"
    assert main([*args, "--force"]) == 0
    assert champion() == "4" and aliases.alias_version(MODEL, "previous_champion") == "2"
    move = [e for e in audit.read_events(project, MODEL) if e["alias"] == "champion"][-1]
    assert move["action"] == "force-promote" and move["actor"] == "alice"
    assert move["gate"]["overridden"] is True and move["gate"]["promote"] is False
    assert "demo of a forced move" in move["reason"] and "gate overridden" in move["reason"]
    model_tags = MlflowClient().get_registered_model(MODEL).tags
    (tagged,) = [e for e in audit.registry_events(model_tags, MODEL) if e["seq"] == move["seq"]]
    assert tagged == {**move, "gate": None}  # the gate's numbers are the version's gate.* tags


def test_6_rollback_returns_to_the_previous_champion(store, monkeypatch):
    project, uri = store
    args = ["-C", str(project), "rollback", MODEL, "--reason", "v4 misbehaves"]
    assert main([*args, "--set", f"storage.tracking_uri={uri}"]) == 0
    assert champion() == "2"
    assert aliases.alias_version(MODEL, "previous_champion") == "1"  # who v2 replaced
    move = [e for e in audit.read_events(project, MODEL) if e["alias"] == "champion"][-1]
    assert (move["action"], move["from_version"], move["to_version"]) == ("rollback", "4", "2")
    assert "| rollback | @champion | 4 -> 2 |" in _history("4")  # rewritten at each move


def test_7_two_gates_finishing_at_once_never_both_win(store):
    project, _ = store
    aliases.move_champion(project, MODEL, "1", "2", "manual-promote", "reset to weak")
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def gate(version: str) -> None:
        try:
            barrier.wait()
            results[version] = gate_and_promote(project, gate_params(), MODEL, version)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=gate, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    winners = [v for v, r in results.items() if r["promoted"]]
    assert len(winners) == 1 and champion() == winners[0]
    loser = ({"2", "3"} - set(winners)).pop()
    assert results[loser]["champion_before"] == winners[0]  # re-gated against the winner


def test_8_compare_and_set_refuses_a_stale_expectation(store):
    project, _ = store
    current = champion()
    other = "1" if current != "1" else "2"
    with pytest.raises(aliases.ChampionMoved):
        aliases.move_champion(project, MODEL, other, expected_from="4", action="x", reason="y")
    assert champion() == current


def test_9_challenger_only_moves_forward(store):
    project, _ = store
    assert aliases.mark_newest(project, MODEL, "challenger", "3").to_version == "3"
    assert aliases.mark_newest(project, MODEL, "challenger", "2") is None  # a late, older one
    assert aliases.alias_version(MODEL, "challenger") == "3"
    last = audit.read_events(project, MODEL)[-1]
    assert (last["alias"], last["from_version"], last["to_version"]) == ("challenger", None, "3")
