"""The package layers import one way: flows, then stages, then the domain packages in a fixed
order, then the base layer (tasks.core). No import cycle among tasks/ and flows/."""

import pytest

from tests.architecture.import_graph import direct_imports, find_cycle, project_modules

# Highest first: a module may import its own layer and the layers below it, never above.
LAYERS = (
    "flows",
    "tasks.serving",  # compatibility alias for models registered before the layout
    "tasks.stages",
    "tasks.registry",
    "tasks.evaluation",
    "tasks.transferability",
    "tasks.modeling",
    "tasks.data",
    "tasks.core",
)


def layer_of(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None  # the top-level package ``tasks`` itself


def upward_imports() -> list[str]:
    found = []
    for module in project_modules():
        rank = layer_of(module)
        for imported in sorted(direct_imports(module)):
            imported_rank = layer_of(imported)
            if None not in (rank, imported_rank) and imported_rank < rank:
                found.append(f"{module} imports {imported} ({LAYERS[imported_rank]} is above)")
    return found


def test_every_module_belongs_to_a_layer():
    assert [m for m in project_modules() if layer_of(m) is None] == ["tasks"]


def test_no_import_cycle():
    cycle = find_cycle(project_modules())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    assert upward_imports() == []


def test_the_layer_check_sees_an_upward_import(monkeypatch):
    """The contract is not vacuous: an upward import added to the graph is reported."""
    from tests.architecture import import_graph

    real = import_graph.direct_imports

    def with_violation(module):
        extra = {"tasks.stages.register"} if module == "tasks.core.params" else set()
        return real(module) | extra

    monkeypatch.setattr("tests.architecture.test_layers.direct_imports", with_violation)
    assert upward_imports() == [
        "tasks.core.params imports tasks.stages.register (tasks.stages is above)"
    ]


@pytest.mark.parametrize("module", ["tasks.stages.prepare", "tasks.registry.lineage"])
def test_graph_includes_imports_deferred_into_functions(module):
    assert direct_imports(module), f"{module} has project imports"
