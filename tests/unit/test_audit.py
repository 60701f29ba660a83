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


def test_tag_line_reads_back_as_the_event():
    event = audit.AliasEvent(
        "m", "champion", "force-promote", "1", "12", "demo; at 2020-01-01T00:00:00 too", seq=3
    )
    line = event.to_line()
    assert line.startswith(f"force-promote: @champion 1 -> 12 by {event.actor} at {event.when}; ")
    read = audit.registry_events({"alias_event.000003": line}, "m")
    assert read == [{**json.loads(event.to_json()), "gate": None}]
    first = audit.AliasEvent("m", "challenger", "challenger", None, "1", "", actor="a b")
    (back,) = audit.registry_events({"alias_event.000001": first.to_line()}, "m")
    assert (back["from_version"], back["to_version"], back["actor"], back["reason"]) == (
        None,
        "1",
        "a b",
        "",
    )


def test_versions_tagged_with_json_still_read():
    old = audit.AliasEvent("m", "champion", "gate-promote", None, "1", "x", gate={"p": 1}, seq=1)
    new = audit.AliasEvent("m", "champion", "rollback", "2", "1", "bad", seq=2)
    tags = {"alias_event.000001": old.to_json(), "alias_event.000002": new.to_line()}
    events = audit.registry_events(tags, "m")
    assert events[0]["gate"] == {"p": 1} and events[1]["action"] == "rollback"


def test_history_of_one_version_is_a_table_of_its_moves():
    events = [
        {**json.loads(e.to_json()), "seq": i}
        for i, e in enumerate(
            (
                audit.AliasEvent("m", "champion", "gate-promote", None, "1", "first", actor="a"),
                audit.AliasEvent("m", "champion", "gate-promote", "1", "2", "a | b", actor="a"),
                audit.AliasEvent("m", "challenger", "challenger", "2", "3", "newest", actor="a"),
            ),
            start=1,
        )
    ]
    text = audit.history_markdown("m", events, "1")
    assert text.startswith("# Alias history: m version 1")
    assert "| 1 | " in text and "| 2 | " in text and "| 3 | " not in text
    assert "a \\| b" in text  # a pipe in a reason stays inside its cell
    assert "No alias has moved yet" in audit.history_markdown("m", [], "9")
