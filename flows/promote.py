"""Prefect flow ``promote_model``: the promotion gate, the pipeline's last step after register.

The candidate version and the current ``@champion`` are scored on the same frozen target
test split; ``@champion`` moves only on a significant gain (tasks/registry/gate.py), by
compare-and-set under a lock, so two pipelines finishing at once cannot both win. If the
champion moved while the gate was scoring, the gate runs again against the new champion.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.core import versioning
from tasks.core.context import read_json
from tasks.core.params import Params
from tasks.registry import publishing as registry
from tasks.registry.gate import GateResult, decide, gate_markdown, load_test_split, score_version

CAS_ATTEMPTS = 3


class PromotionRefused(RuntimeError):
    """A person asked for a promotion the gate refused, without ``--force``."""


def _target_hash(project_dir: Path) -> str:
    try:
        return versioning.output_hashes(project_dir).get("data/target", "unknown")
    except Exception:  # no DVC repo: the gate still runs, the hash is just not known
        return "unknown"


def evaluate_gate(
    project_dir: Path, params: Params, name: str, candidate: str, champion: str | None
) -> GateResult:
    """Score both versions on the frozen test split and apply the rules."""
    rules = params.promote
    split = load_test_split(project_dir / "data" / "target", _target_hash(project_dir))

    def score(version: str):
        return registry.with_retries(
            lambda: score_version(f"models:/{name}/{version}", split),
            f"scoring {name} version {version}",
            rules.retries,
            rules.retry_delay,
        )

    champion_correct = None if champion is None else score(champion)
    return decide(score(candidate), champion_correct, rules)


def gate_and_promote(
    project_dir: Path,
    params: Params,
    name: str,
    candidate: str,
    reason: str | None = None,
    force: bool = False,
    manual: bool = False,
) -> dict:
    """Run the gate and, if it passes (or ``force``), move ``@champion`` by compare-and-set."""
    r, rules = params.registry, params.promote
    retry = {"retries": rules.retries, "delay": rules.retry_delay}
    if not registry.with_retries(
        lambda: registry.version_exists(name, candidate), "reading the candidate", **retry
    ):
        raise ValueError(f"{name} has no version {candidate}")
    for _ in range(CAS_ATTEMPTS):
        champion = registry.with_retries(
            lambda: registry.alias_version(name, r.champion_alias), "reading @champion", **retry
        )
        outcome = {
            "model": name,
            "candidate": candidate,
            "champion_before": champion,
            "champion_after": champion,
            "promoted": False,
            "forced": False,
            "gate": None,
            "reason": "",
        }
        if champion == candidate:
            outcome["reason"] = f"version {candidate} is already @{r.champion_alias}"
            return outcome
        result = evaluate_gate(project_dir, params, name, candidate, champion)
        tags = {**result.tags(), "gate.champion_version": champion or "none"}
        registry.with_retries(
            lambda t=tags: registry.tag_version(name, candidate, t), "tagging the gate", **retry
        )
        outcome["gate"] = result.as_dict()
        outcome["reason"] = result.reason
        if not result.promote and not force:
            if manual:
                raise PromotionRefused(
                    f"the gate refused {name} version {candidate}: {result.reason} "
                    "(use --force to override; the override is recorded)"
                )
            return outcome
        forced = force and not result.promote
        action = "force-promote" if forced else ("manual-promote" if manual else "gate-promote")
        why = reason or result.reason
        if forced:
            why = f"{why} [gate overridden: {result.reason}]"
        try:
            registry.move_champion(
                project_dir,
                name,
                candidate,
                expected_from=champion,
                action=action,
                reason=why,
                gate={**result.as_dict(), "overridden": forced},
                champion_alias=r.champion_alias,
                previous_alias=rules.previous_alias,
                **retry,
            )
        except registry.ChampionMoved:
            continue  # someone else promoted meanwhile: compare against the new champion
        return {**outcome, "champion_after": candidate, "promoted": True, "forced": forced}
    raise registry.ChampionMoved(f"@{r.champion_alias} of {name} kept moving; gate gave up")


@task(cache_policy=NO_CACHE)
def run_gate(project_dir: str, params: Params, name: str, candidate: str) -> dict:
    """The gate as a Prefect task; transient tracking errors are retried inside, with backoff."""
    return gate_and_promote(Path(project_dir), params, name, candidate)


def outcome_markdown(outcome: dict) -> str:
    if outcome["gate"] is None:
        return f"## Promotion gate: {outcome['model']}\n\n{outcome['reason']}\n"
    result = GateResult(**outcome["gate"])
    return gate_markdown(outcome["model"], outcome["candidate"], outcome["champion_before"], result)


@flow(name="promote_model")
def promote_model(project_dir: str = ".", version: str | None = None) -> dict:
    """Gate the newest registered candidate (or ``version``) against ``@champion``."""
    from tasks.core.context import open_context
    from tasks.core.params import load_resolved

    project = Path(project_dir).resolve()
    params = load_resolved(project)
    ctx = open_context(project, params)
    name = params.registry.model_name
    candidate = version or str(read_json(ctx.layout.registration)["version"])
    outcome = run_gate(str(project), params, name, candidate)
    create_markdown_artifact(outcome_markdown(outcome), key="promotion-gate")
    return outcome
