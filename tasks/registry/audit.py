"""Alias history: MLflow keeps only where an alias points now, so every move is recorded here.

Each move becomes one event (when, by whom, from, to, why, gate result), appended to
``.tlp/alias-events.jsonl`` in the project (opened in append mode, never rewritten) and
written as a tag ``alias_event.<seq>`` on the registered model and on both versions
involved, so the history also travels with the registry.
"""

from __future__ import annotations

import getpass
import json
import os
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


def registry_events(model_tags: dict[str, str]) -> list[dict]:
    """The events recorded as registered-model tags, oldest first."""
    items = sorted(
        (int(k[len(TAG_PREFIX) :]), v) for k, v in model_tags.items() if k.startswith(TAG_PREFIX)
    )
    return [json.loads(v) for _, v in items]
