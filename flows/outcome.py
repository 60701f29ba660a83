"""What a finished run's summary says happened: the promotion gate's decision and its reason,
where ``@champion`` stands, which model URI loads this run's model, and how the registered
candidate was chosen (ties included).

The terminal summary (flows/cli/summary.py), the up-to-date shortcut's message and the
Prefect artifact (flows/pipeline.summary_markdown) all say it with these functions, so they
cannot disagree. No imports: the shortcut prints without loading Prefect, MLflow or torch.

A refused candidate is the case that matters: it is registered (``@challenger``) but
``@champion`` still loads an older model, possibly of another dataset, so the summary must
never offer ``@champion`` as the way to load this run's model unless the gate moved it here.
"""

from __future__ import annotations

# the default alias names, for summaries written before the names were kept in them
CHAMPION, CHALLENGER = "champion", "challenger"


def alias_names(summary: dict) -> tuple[str, str]:
    return summary.get("champion_alias") or CHAMPION, summary.get("challenger_alias") or CHALLENGER


def champion_version(summary: dict, aliases: list[str]) -> str | None:
    """The version ``@champion`` points at after the run; ``aliases`` are the run's version's
    current aliases (they decide for summaries written before the gate's outcome was kept)."""
    promotion = summary.get("promotion")
    if promotion:
        after = promotion.get("champion_after")
        return None if after is None else str(after)
    champion, _ = alias_names(summary)
    return str(summary["version"]) if champion in aliases else None


def gate_line(summary: dict) -> str | None:
    """The gate's decision and reason, or None when the summary did not record one."""
    promotion = summary.get("promotion")
    if not promotion:
        return None
    reason = promotion.get("reason") or "no reason recorded"
    if promotion.get("gate") is None and not promotion.get("promoted"):
        return f"not run: {reason}"  # e.g. the version already is @champion
    if promotion.get("forced"):
        return f"PROMOTED, gate overridden: {reason}"
    return f"{'PROMOTED' if promotion.get('promoted') else 'REFUSED'}: {reason}"


def champion_line(summary: dict, aliases: list[str]) -> str:
    """Where ``@champion`` stands after the run, and whether that is this run's model."""
    version = str(summary["version"])
    after = champion_version(summary, aliases)
    promotion = summary.get("promotion") or {}
    before = promotion.get("champion_before")
    if after == version:
        if promotion.get("promoted"):
            was = f"was version {before}" if before is not None else "the first champion"
            return f"version {version}, this run's model ({was})"
        return f"version {version}, this run's model"
    if not promotion:  # an older summary: only this version's aliases are known
        return f"not this run's model (version {version} does not hold it)"
    if after is None:
        return "none: no version has passed the gate yet"
    return f"unchanged: version {after}, an earlier model, not this run's version {version}"


def load_line(summary: dict, aliases: list[str]) -> tuple[str, str]:
    """(label, code) that loads this run's model: ``@champion`` only when it is this run's."""
    name, version = summary["model_name"], str(summary["version"])
    champion, challenger = alias_names(summary)
    if champion_version(summary, aliases) == version:
        return "load it with", f"mlflow.pyfunc.load_model('models:/{name}@{champion}')"
    also = f"  (or models:/{name}@{challenger})" if challenger in aliases else ""
    return "load this model", f"mlflow.pyfunc.load_model('models:/{name}/{version}'){also}"


def selection_basis(summary: dict) -> tuple[str, str]:
    """(metric key, words) the registered candidate was chosen on."""
    if summary.get("selected_on") == "accuracy":
        return "accuracy", "test accuracy (no validation split)"
    return "val_accuracy", "validation accuracy"


def tie_line(summary: dict) -> str | None:
    """Two or more candidates with the registered one's selection score: which won and why
    (tasks/evaluation/metrics.select_best gives a tie to the earlier strategy in the list)."""
    key, words = selection_basis(summary)
    candidates = summary["candidates"]
    best = summary.get("best") or summary.get("registered_strategy")
    score = candidates.get(best, {}).get(key)
    if score is None:
        return None
    tied = [n for n, m in candidates.items() if m.get(key) == score]
    if len(tied) < 2:
        return None
    said = f"{', '.join(tied)} scored the same {score:.4f} on {words}"
    if tied[0] != best:  # not select_best's choice: say only what was registered
        return f"{said}; {best} was registered"
    return (
        f"{said}; {best} won as the first of them in transfer.strategies (ties go to the earlier)"
    )


def split_sizes(summary: dict) -> tuple[int | None, int | None]:
    """(test images, validation images) every candidate was scored on; None if not recorded."""
    first = next(iter(summary["candidates"].values()), {})
    return first.get("n"), first.get("val_n")
