"""dvc.yaml and the flow's stage list describe one DAG: same stages, order, commands, paths."""

import pytest

from tasks.core.context import PATHS
from tasks.stages import STAGE_NAMES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dvc_stages(tmp_path_factory):
    import networkx as nx
    from dvc.repo import Repo

    from tests.conftest import make_dvc_project

    # DVC refuses a repository whose dvc.lock is git-ignored, as the tool's own repository's
    # is: read the DAG from a project made the way users make one (same dvc.yaml and code).
    project = make_dvc_project(tmp_path_factory.mktemp("dag"))
    with Repo(str(project)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = [s.name for s in reversed(list(nx.topological_sort(graph)))]
        yield stages, order


def test_same_stages_in_the_same_order(dvc_stages):
    stages, order = dvc_stages
    assert tuple(order) == STAGE_NAMES
    assert set(stages) == set(STAGE_NAMES)


def test_each_stage_runs_itself_through_tlp(dvc_stages):
    stages, _ = dvc_stages
    for name, stage in stages.items():
        assert stage.cmd == f"tlp stage {name}"


def test_every_declared_path_is_a_layout_path(dvc_stages):
    stages, _ = dvc_stages
    declared = {str(o.def_path) for s in stages.values() for o in s.outs}
    layout = set(PATHS.values()) - {"reports/summary.json"}  # the flow's own report
    assert declared == layout
