"""A real process holding a project's run lock, for the tests of who waits and who stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOLD = """
import sys, time
from pathlib import Path
from tasks.core.locking import run_lock
with run_lock(Path(sys.argv[1]), what=sys.argv[3]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(project: Path, seconds: float, what: str = "holder") -> subprocess.Popen:
    """Start a process that takes the lock as ``what`` and holds it for ``seconds``; return
    once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(project), str(seconds), what],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc
