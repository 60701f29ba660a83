"""A model version registered before ``tasks/`` was split into packages still loads.

A models-from-code pyfunc carries its own copy of the entry file, and versions logged by the
old layout carry one that imports ``tasks.serving.ImageClassifier``. This logs a real
checkpoint with exactly that file, and the same checkpoint with today's entry, in a real
SQLite store; a fresh process loads both through ``models:/NAME/1`` and predicts real test
images. Without the ``tasks/serving.py`` alias the old version fails to load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.registry_support import (
    first_test_bytes,
    first_test_files,
    first_test_rows,
    open_store,
    register,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The code of tasks/_pyfunc_entry.py before the layered layout (git show
# f2252ae:tasks/_pyfunc_entry.py): every version registered until then carries it as its code.
LEGACY_ENTRY = (
    '"""MLflow models-from-code entry point: logged as the model\'s code, '
    'so nothing is pickled."""\n'
    "from mlflow.models import set_model\n"
    "from tasks.serving import ImageClassifier\n"
    "set_model(ImageClassifier())\n"
)

LOAD_AND_PREDICT = """
import json, sys
import mlflow
import numpy as np
from PIL import Image

mlflow.set_tracking_uri(sys.argv[1])
images = [np.asarray(Image.open(p)) for p in sys.argv[2:]]
out = {}
for name in ("tlp-current", "tlp-legacy"):  # current first: it must not need the alias
    frame = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(images)
    out[name] = {
        "label": list(frame["label"]),
        "probabilities": [list(map(float, p)) for p in frame["probabilities"]],
        "alias": getattr(sys.modules.get("tasks.serving"), "__file__", None),
    }
print(json.dumps(out))
"""


def _log_legacy(ckpt, project, experiment_id, entry) -> str:
    """Log and register ``ckpt`` with the old entry file, as the old log_model did."""
    import mlflow

    from tasks.registry.publishing import input_example
    from tasks.registry.serving import CHECKPOINT_ARTIFACT

    example = first_test_bytes(project / "data" / "target", 1)[0]
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry),
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
            pip_requirements=[f"mlflow=={mlflow.__version__}"],
            registered_model_name="tlp-legacy",
            input_example=input_example(example, 16, 1),
        )
    return str(info.registered_model_version)


def test_version_logged_with_the_old_entry_loads_and_predicts_like_a_new_one(
    gate_candidates, tmp_path
):
    import numpy as np

    project = gate_candidates.project
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = open_store(uri, project)
    entry = tmp_path / "_pyfunc_entry.py"
    entry.write_text(LEGACY_ENTRY)
    assert _log_legacy(gate_candidates.strong, project, experiment, entry) == "1"
    assert register(gate_candidates.strong, project, experiment, name="tlp-current") == "1"

    target = project / "data" / "target"
    test = first_test_rows(target, 12)
    paths = [str(f) for f in first_test_files(target, 12, tmp_path / "images")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, uri, *paths],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    current, legacy = out["tlp-current"], out["tlp-legacy"]
    assert current["alias"] is None  # today's entry does not need the alias
    # the old entry imported it, from this checkout (an editable install elsewhere would hide
    # a missing tasks/serving.py behind its own copy)
    assert (
        legacy["alias"] is not None
        and Path(legacy["alias"]).resolve() == ROOT / "tasks" / "serving.py"
    )
    assert legacy["label"] == current["label"]
    assert np.allclose(legacy["probabilities"], current["probabilities"], rtol=0, atol=1e-6)
    truth = [str(c) for c in test.class_name]
    assert sum(a == b for a, b in zip(legacy["label"], truth, strict=True)) >= 6  # a real model
