"""The candidate stages ``transfer@NAME`` that DVC reports stale, trained on the engine.

``train_candidates`` is the one place the flow hands candidates to an executor
(``engine`` params). This version trains them in this process, one after another; each
returns its seconds of work.
"""

from __future__ import annotations

import time

from tasks.core.context import StageContext


def train_candidates(ctx: StageContext, names: list[str]) -> dict[str, float]:
    """Train the strategies ``names`` (not stage names); seconds of work each, by name."""
    from tasks.stages.transfer import run_candidate

    seconds = {}
    for name in names:
        started = time.perf_counter()
        run_candidate(ctx, name)
        seconds[name] = time.perf_counter() - started
    return seconds
