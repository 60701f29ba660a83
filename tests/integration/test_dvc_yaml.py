"""dvc.yaml and the flow's stage list describe one DAG: same stages, order, commands, paths;
and each candidate stage ``transfer@NAME`` depends on its own params only (DVC's own status)."""

from pathlib import Path

import pytest

from tasks.core.context import PATHS, Layout, candidate_report
from tasks.core.params import resolve_params, write_resolved
from tasks.core.versioning import open_repo
from tasks.stages import stage_names

pytestmark = pytest.mark.integration

STRATEGIES = "transfer.strategies=[scratch,linear_probe,l2sp,full]"


def _params(project: Path, *overrides: str):
    return resolve_params(project / "params.yaml", overrides=[STRATEGIES, *overrides])


def _fake_outputs(repo, project: Path) -> None:
    """A small file for every path a stage reads or writes (code is there already): DVC
    hashes them like any, and no stage has to run."""
    for stage in repo.index.stages:
        for entry in [*stage.deps, *stage.outs]:
            path = project / str(entry.def_path)
            if path.exists() or path.name == "params.resolved.yaml":
                continue
            if path.suffix:  # a file (reports/*.json, reports/model_card.md)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{entry.def_path}\n")
            else:  # a directory output (models/candidates/full, data/source)
                path.mkdir(parents=True, exist_ok=True)
                (path / "part").write_text(f"{entry.def_path}\n")


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """A project whose every stage is recorded in dvc.lock (fake outputs), the candidate
    stages committed through their group name ``transfer``, as a lineage rerun does."""
    from tests.conftest import make_dvc_project

    # DVC refuses a repository whose dvc.lock is git-ignored, as the tool's own repository's
    # is: read the DAG from a project made the way users make one (same dvc.yaml and code).
    project = make_dvc_project(tmp_path_factory.mktemp("dag"))
    write_resolved(_params(project), project)
    with open_repo(project) as repo:  # DVC reads `vars` files from the working directory
        _fake_outputs(repo, project)
        for name in ("prepare", "validate", "pretrain", "transfer", "evaluate", "register"):
            repo.commit(name, force=True)
        assert repo.status() == {}
    return project


@pytest.fixture(scope="module")
def dvc_stages(committed):
    import networkx as nx

    with open_repo(committed) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = [s.name for s in reversed(list(nx.topological_sort(graph)))]
        yield stages, order


def test_same_stages_in_the_same_order(dvc_stages, committed):
    stages, order = dvc_stages
    names = stage_names(_params(committed))
    assert names[3:7] == (
        "transfer@scratch",
        "transfer@linear_probe",
        "transfer@l2sp",
        "transfer@full",
    )
    assert set(stages) == set(names)
    # the candidate stages are independent of each other: DVC may order them either way
    assert [n.partition("@")[0] for n in order] == [n.partition("@")[0] for n in names]


def test_each_stage_runs_itself_through_tlp(dvc_stages):
    stages, _ = dvc_stages
    for name, stage in stages.items():
        assert stage.cmd == f"tlp stage {name}"


def test_every_declared_path_is_a_layout_path(dvc_stages, committed):
    stages, _ = dvc_stages
    layout = Layout(Path("."))
    for name in ("scratch", "linear_probe", "l2sp", "full"):
        outs = {str(o.def_path) for o in stages[f"transfer@{name}"].outs}
        assert outs == {f"models/candidates/{name}", str(candidate_report(layout, name))}
    candidate_dirs = {"models/candidates/", "reports/transfer/"}
    declared = {str(o.def_path) for s in stages.values() for o in s.outs}
    declared = {
        next((d.rstrip("/") for d in candidate_dirs if p.startswith(d)), p) for p in declared
    }
    assert declared == set(PATHS.values()) - {"reports/summary.json"}  # the flow's own report


def _stale_after(project: Path, *overrides: str) -> set[str]:
    write_resolved(_params(project, *overrides), project)
    try:
        with open_repo(project) as repo:
            return set(repo.status())
    finally:
        write_resolved(_params(project), project)


def test_one_strategy_knob_reruns_that_candidate_alone(committed):
    assert _stale_after(committed, "transfer.l2sp_alpha=0.5") == {"transfer@l2sp", "evaluate"}


def test_a_shared_knob_reruns_every_candidate_that_reads_it(committed):
    stale = _stale_after(committed, "transfer.epochs=3")
    assert stale == {"transfer@scratch", "transfer@l2sp", "transfer@full", "evaluate"}
