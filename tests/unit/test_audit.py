import json

from tasks.registry import audit


def test_events_append_and_never_rewrite(tmp_path):
    first = audit.AliasEvent("m", "champion", "gate-promote", None, "1", "first", actor="a")
    second = audit.AliasEvent("m", "champion", "rollback", "2", "1", "bad", actor="b", seq=2)
    path = audit.append(tmp_path, first)
    head = path.read_text()
    audit.append(tmp_path, second)
    assert path.read_text().startswith(head)  # append-only
    events = audit.read_events(tmp_path, "m")
    assert [e["action"] for e in events] == ["gate-promote", "rollback"]
    assert events[1]["from_version"] == "2" and events[1]["actor"] == "b"
    assert set(events[0]) >= {"when", "actor", "from_version", "to_version", "reason", "gate"}


def test_registry_sequence_and_order():
    tags = {
        "alias_event.000002": json.dumps({"seq": 2}),
        "alias_event.000010": json.dumps({"seq": 10}),
        "other": "x",
    }
    assert audit.next_seq(tags) == 11 and audit.next_seq({}) == 1
    assert [e["seq"] for e in audit.registry_events(tags)] == [2, 10]


def test_actor_can_be_named(monkeypatch):
    monkeypatch.setenv("TLP_ACTOR", "alice")
    assert audit.whoami() == "alice"
