"""Alias history: MLflow keeps only where an alias points now, so every move is recorded here.

Each move becomes one event (when, by whom, from, to, why, gate result), appended as JSON to
``.tlp/alias-events.jsonl`` in the project (opened in append mode, never rewritten) and
written as a tag ``alias_event.<seq>`` on the registered model and on both versions
involved, so the history also travels with the registry. The tag holds one line a person
reads on the registry page (``gate-promote: @champion 1 -> 2 by alice at ...; why``), and
``registry_events`` reads it back, as it reads the JSON blobs older versions were tagged with;
the gate's numbers, which the line leaves out, are the version's ``gate.*`` tags.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

EVENT_LOG = ".tlp/alias-events.jsonl"
TAG_PREFIX = "alias_event."


def whoami() -> str:
    """The person or process moving an alias: ``TLP_ACTOR`` if set, else user@host."""
    actor = os.environ.get("TLP_ACTOR")
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class AliasEvent:
    model: str
    alias: str
    action: str  # gate-promote, gate-keep, force-promote, manual-promote, rollback, challenger, ...
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str = field(default_factory=whoami)
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    gate: dict | None = None
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_line(self) -> str:
        """The event as the registry tag shows it: ``ACTION: @ALIAS FROM -> TO by WHO at WHEN;
        WHY`` (``none`` for a missing version); ``parse_line`` reads it back."""
        moved = f"{self.from_version or 'none'} -> {self.to_version or 'none'}"
        line = f"{self.action}: @{self.alias} {moved} by {self.actor} at {self.when}"
        return f"{line}; {self.reason}" if self.reason else line


_LINE = re.compile(
    r"(?P<action>\S+): @(?P<alias>\S+) (?P<from_version>\S+) -> (?P<to_version>\S+)"
    r" by (?P<actor>.+?) at (?P<when>\d{4}-\d\d-\d\dT\S+?)(?:; (?P<reason>.*))?",
    re.DOTALL,
)


def parse_line(line: str) -> dict:
    """An event from its tag line (``AliasEvent.to_line``), without the gate's numbers."""
    found = _LINE.fullmatch(line)
    if found is None:
        raise ValueError(f"not an alias event line: {line[:120]!r}")
    event = found.groupdict()
    for key in ("from_version", "to_version"):
        event[key] = None if event[key] == "none" else event[key]
    event["reason"] = event["reason"] or ""
    return {**event, "gate": None}


def log_path(project_dir: Path) -> Path:
    return project_dir / EVENT_LOG


def append(project_dir: Path, event: AliasEvent) -> Path:
    """Append one line; ``O_APPEND`` keeps concurrent writers from overwriting each other."""
    path = log_path(project_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(event.to_json() + "\n")
    return path


def read_events(project_dir: Path, model: str | None = None) -> list[dict]:
    path = log_path(project_dir)
    if not path.is_file():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if model is None or e["model"] == model]


def next_seq(model_tags: dict[str, str]) -> int:
    """The registry-side sequence number: one more than the highest recorded event."""
    seqs = [int(k[len(TAG_PREFIX) :]) for k in model_tags if k.startswith(TAG_PREFIX)]
    return max(seqs, default=0) + 1


def tag_event(value: str, seq: int, model: str | None = None) -> dict:
    """One ``alias_event.<seq>`` tag as an event dict: a line, or an older version's JSON."""
    if value.lstrip().startswith("{"):
        return json.loads(value)
    event = parse_line(value)
    return {"model": model, **event, "seq": seq}


def registry_events(model_tags: dict[str, str], model: str | None = None) -> list[dict]:
    """The events recorded as registered-model (or version) tags, oldest first."""
    items = sorted(
        (int(k[len(TAG_PREFIX) :]), v) for k, v in model_tags.items() if k.startswith(TAG_PREFIX)
    )
    return [tag_event(v, seq, model) for seq, v in items]


def history_markdown(model: str, events: list[dict], version: str | None = None) -> str:
    """The alias history people read: a table of moves, oldest first (of one version's, when
    ``version`` is given: the moves to or from it)."""
    if version is not None:
        events = [e for e in events if version in (e["from_version"], e["to_version"])]
    title = f"# Alias history: {model}" + (f" version {version}" if version else "")
    if not events:
        return f"{title}\n\nNo alias has moved yet.\n"
    rows = [
        f"| {e['seq']} | {e['when']} | {e['action']} | @{e['alias']} | "
        f"{e['from_version'] or '-'} -> {e['to_version'] or '-'} | {e['actor']} | "
        f"{_cell(e['reason'])} |"
        for e in events
    ]
    head = "| # | when (UTC) | action | alias | move | by | why |\n|---|---|---|---|---|---|---|"
    return f"{title}\n\n{head}\n" + "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")
