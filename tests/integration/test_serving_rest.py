"""`mlflow models serve -m models:/NAME@champion` answers a REST prediction (server on
127.0.0.1, started and stopped by the test)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tasks.registry import aliases
from tests.registry_support import (
    MODEL,
    free_port,
    open_store,
    register,
    start_process,
    stop_process,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


def test_served_champion_answers_rest_predictions(gate_candidates, tmp_path):
    import mlflow
    import pandas as pd

    from tasks.data.preprocessing import read_image

    project = gate_candidates.project
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = open_store(uri, project)
    version = register(gate_candidates.strong, project, exp)
    aliases.move_champion(tmp_path, MODEL, version, None, "manual-promote", "serve test")
    target = project / "data" / "target"
    test = pd.read_parquet(target / "manifest.parquet").query("split == 'test'").head(20)
    images = np.stack([read_image(target / p, 1) for p in test.path])
    local = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(images)

    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion"]
    args += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process(args, env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, tmp_path / "serve.log")
        url = f"http://127.0.0.1:{port}/invocations"
        answer = post(url, {"inputs": images.tolist()})["predictions"]
        assert [a["label"] for a in answer] == local["label"].tolist()
        assert all(abs(sum(a["probabilities"]) - 1) < 1e-4 for a in answer)
        one = post(url, {"inputs": [images[0].tolist()]})["predictions"]
        assert len(one) == 1 and one[0]["label"] == local["label"].iloc[0]
    finally:
        stop_process(proc)
    assert proc.poll() is not None
