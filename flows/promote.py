"""Prefect flow ``promote_model``: the promotion gate, the pipeline's last step after register.

The candidate version and the current ``@champion`` are scored on the same frozen target
test split; ``@champion`` moves only on a significant gain (tasks/registry/gate.py), by
compare-and-set under a lock, so two pipelines finishing at once cannot both win. If the
champion moved while the gate was scoring, the gate runs again against the new champion.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.core.context import read_json
from tasks.core.params import Params
from tasks.registry import aliases, audit, frozen_target, identity
from tasks.registry.gate import GateResult, decide, gate_markdown, load_test_split, score_version
from tasks.registry.modelcard import record_promotion
from tasks.registry.publishing import tag_version, version_exists, version_tags
from tasks.registry.retries import RegistryUnavailable, with_retries

CAS_ATTEMPTS = 3
TARGET_TAG = "dvc.data/target"  # the champion's target data (publishing.lineage_tags)
log = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """A person asked for a promotion the gate refused, without ``--force``."""


def evaluate_gate(
    project_dir: Path, params: Params, name: str, candidate: str, champion: str | None
) -> GateResult:
    """Score both versions on the test split of the champion's own target (its
    ``dvc.data/target`` tag: the data it was judged on, not whatever ``data/`` holds now)
    and apply the rules. When that data cannot be found, the champion is kept and the
    reason names the missing data."""
    rules = params.promote
    digest = None
    if champion is not None:
        digest = _retry(params)(lambda: version_tags(name, champion), "reading the champion")
        digest = digest.get(TARGET_TAG)

    def score(version: str, split):
        return with_retries(
            lambda: score_version(f"models:/{name}/{version}", split),
            f"scoring {name} version {version}",
            rules.retries,
            rules.retry_delay,
        )

    try:
        with frozen_target.target_dir(project_dir, digest) as (folder, found):
            split = load_test_split(folder, found)
            champion_correct = None if champion is None else score(champion, split)
            return decide(score(candidate, split), champion_correct, rules)
    except frozen_target.TargetUnavailable as exc:
        return _kept(f"champion kept: {exc}", rules)


def _kept(reason: str, rules) -> GateResult:
    """A decision made without scoring: keep the champion, for ``reason``."""
    return GateResult(
        False,
        reason,
        float("nan"),
        None,
        None,
        0,
        0,
        0,
        rules.alpha,
        rules.min_delta,
        rules.min_accuracy,
    )


def comparable(name: str, candidate: dict, champion: dict | None, versions: tuple) -> str | None:
    """Why ``candidate`` (its version tags) must not be gated against ``champion``'s: a
    registration cut short, or another task (tasks/registry/identity.py); None: it may."""
    cand_v, champ_v = versions
    if identity.registration_incomplete(candidate):
        return (
            f"{name} version {cand_v} is an incomplete registration (its register stage did "
            "not finish): it is never gated or promoted; rerun the pipeline to register anew"
        )
    if champion is None:
        return None
    ours, theirs = identity.version_task(candidate), identity.version_task(champion)
    if ours != theirs:
        return (
            f"{name} version {cand_v} (task {ours or 'unrecorded'}) and @champion version "
            f"{champ_v} (task {theirs or 'unrecorded'}) belong to different tasks: versions of "
            "different tasks are never compared"
        )
    return None


def _retry(params: Params):
    """``with_retries`` with the ``promote`` section's tries and first delay."""
    return functools.partial(
        with_retries, retries=params.promote.retries, delay=params.promote.retry_delay
    )


def _outcome(name: str, candidate: str, champion: str | None) -> dict:
    """What the gate reports when nothing moved; a promotion updates it."""
    return {
        "model": name,
        "candidate": candidate,
        "champion_before": champion,
        "champion_after": champion,
        "promoted": False,
        "forced": False,
        "gate": None,
        "reason": "",
    }


def _promote(
    project_dir: Path,
    params: Params,
    move: tuple[str, str, str | None],
    result: GateResult,
    how: tuple[str, str, bool],
) -> None:
    """Compare-and-set ``@champion``: ``move`` is (model, candidate, champion seen by the
    gate), ``how`` is (action, reason, forced); ``ChampionMoved`` if it moved meanwhile."""
    (name, candidate, champion), (action, why, forced) = move, how
    aliases.move_champion(
        project_dir,
        name,
        candidate,
        expected_from=champion,
        action=action,
        reason=why,
        gate={**result.as_dict(), "overridden": forced},
        champion_alias=params.registry.champion_alias,
        previous_alias=params.promote.previous_alias,
        retries=params.promote.retries,
        delay=params.promote.retry_delay,
    )


def _gate_once(
    project_dir: Path,
    params: Params,
    name: str,
    candidate: str,
    request: tuple[str | None, bool, bool],
) -> dict:
    """One attempt: read ``@champion``, score both, then keep or promote by compare-and-set.
    ``request`` is (reason, force, manual) as ``gate_and_promote`` got them."""
    (reason, force, manual), retry = request, _retry(params)
    champion_alias = params.registry.champion_alias
    champion = retry(lambda: aliases.alias_version(name, champion_alias), "reading @champion")
    outcome = _outcome(name, candidate, champion)
    if champion == candidate:
        return {**outcome, "reason": f"version {candidate} is already @{champion_alias}"}
    refused = retry(
        lambda: comparable(
            name,
            version_tags(name, candidate),
            None if champion is None else version_tags(name, champion),
            (candidate, champion),
        ),
        "reading the versions' tasks",
    )
    if refused:
        if manual:
            raise PromotionRefused(refused)  # not even --force compares two tasks
        return {**outcome, "reason": refused}
    result = evaluate_gate(project_dir, params, name, candidate, champion)
    tags = {**result.tags(), "gate.champion_version": champion or "none"}
    retry(lambda: tag_version(name, candidate, tags), "tagging the gate")
    outcome.update(gate=result.as_dict(), reason=result.reason)
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
    _promote(project_dir, params, (name, candidate, champion), result, (action, why, forced))
    return {**outcome, "champion_after": candidate, "promoted": True, "forced": forced}


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
    exists = _retry(params)(lambda: version_exists(name, candidate), "reading the candidate")
    if not exists:
        raise ValueError(f"{name} has no version {candidate}")
    for _ in range(CAS_ATTEMPTS):
        try:
            outcome = _gate_once(project_dir, params, name, candidate, (reason, force, manual))
        except aliases.ChampionMoved:
            continue  # someone else promoted meanwhile: compare against the new champion
        _record_on_card(params, outcome, reason if manual else None)
        return outcome
    alias = params.registry.champion_alias
    raise aliases.ChampionMoved(f"@{alias} of {name} kept moving; gate gave up")


def _record_on_card(params: Params, outcome: dict, asked: str | None = None) -> None:
    """The decision and its reason (and, for ``tlp promote``, who asked and why) into the
    candidate's model card (its description). The decision itself is already recorded
    (``gate.*`` tags, the alias events), so a registry that stays unreachable here leaves
    the card as it was and a warning."""
    if outcome["gate"] is None:  # nothing was decided (the version already is @champion)
        return
    name, version = outcome["model"], outcome["candidate"]
    if asked is not None:
        outcome = {**outcome, "asked": {"by": audit.whoami(), "reason": asked}}
    try:
        _retry(params)(lambda: record_promotion(name, version, outcome), "updating the card")
    except RegistryUnavailable as exc:
        log.warning("%s version %s: model card not updated: %s", name, version, exc)


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
