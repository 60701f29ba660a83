"""dvc.yaml's deps cover the code each stage runs, so a change to it cannot leave a stage
"up to date" (and a registered model's lineage naming code that did not make it)."""

import ast
from pathlib import Path

import pytest
import yaml

from tasks.stages import STAGES
from tests.architecture.import_graph import ROOT, module_file, transitive_imports

# Code a stage uses without importing it: the register stage logs this file as the model's code.
LOGGED_CODE = {"register": ["tasks/registry/_pyfunc_entry.py"]}


def dvc_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Deps by stage name; a ``foreach`` stage (transfer) by its group name, from its ``do``."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {
        name: [str(d) for d in spec.get("do", spec).get("deps", [])]
        for name, spec in stages.items()
    }


def only_docstring(path: Path) -> bool:
    """A package ``__init__`` holding just a docstring runs no code worth a dependency."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def code_files(stage_module: str) -> list[str]:
    """The project files that importing and running the stage can execute."""
    files = (module_file(m) for m in transitive_imports(stage_module))
    return sorted(str(f.relative_to(ROOT)) for f in files if not only_docstring(f))


def uncovered(stage_module: str, deps: list[str]) -> list[str]:
    def covered(file: str) -> bool:
        return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)

    return [f for f in code_files(stage_module) if not covered(f)]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_dvc_deps_cover_the_code_the_stage_imports(stage):
    deps = dvc_deps()[stage.name]
    missing = uncovered(stage.module, deps) + [
        f for f in LOGGED_CODE.get(stage.name, []) if f not in deps
    ]
    assert missing == [], f"dvc.yaml stage {stage.name!r} lacks deps: {missing}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_code_dep_is_still_code_the_stage_runs(stage):
    """The other direction: a listed file the stage no longer imports retrains for nothing."""
    code = set(code_files(stage.module)) | set(LOGGED_CODE.get(stage.name, []))
    listed = [d for d in dvc_deps()[stage.name] if d.endswith(".py")]
    assert [d for d in listed if d not in code] == []


def test_drift_is_detected_when_a_dep_is_removed():
    """Removing one imported module from a stage's deps is reported (the test can fail)."""
    deps = dvc_deps()["transfer"]
    dropped = "tasks/modeling/objectives.py"
    assert dropped in deps
    assert uncovered("tasks.stages.transfer", [d for d in deps if d != dropped]) == [dropped]
