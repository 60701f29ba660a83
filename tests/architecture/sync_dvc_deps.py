"""Rewrite the code deps of every stage in dvc.yaml from the import graph.

    python -m tests.architecture.sync_dvc_deps

Keeps the data deps (non-``.py`` entries) and their order; the code deps become exactly the
project modules each stage imports (tests/architecture/test_stage_deps.py checks the same).
"""

from __future__ import annotations

import re

from tests.architecture.import_graph import ROOT
from tests.architecture.test_stage_deps import LOGGED_CODE, code_files

DVC_YAML = ROOT / "dvc.yaml"


def synced(text: str) -> str:
    """The deps of each stage, and of a ``foreach`` stage's ``do``, indented as they were."""
    out: list[str] = []
    lines = text.splitlines()
    stage, i = None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  ([\w-]+):\s*(#.*)?$", line):
            stage = m.group(1)
        out.append(line)
        i += 1
        if line.strip() == "deps:" and stage:
            item = " " * (len(line) - len(line.lstrip()) + 2) + "- "
            kept = []
            while i < len(lines) and lines[i].startswith(item):
                if not lines[i][len(item) :].split("#")[0].strip().endswith(".py"):
                    kept.append(lines[i])
                i += 1
            code = code_files(f"tasks.stages.{stage}")
            logged = [f"{f}  # logged as the model's code" for f in LOGGED_CODE.get(stage, [])]
            out += [item + f for f in [*code, *logged]] + kept
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    DVC_YAML.write_text(synced(DVC_YAML.read_text()))
    print(f"synced code deps in {DVC_YAML}")
