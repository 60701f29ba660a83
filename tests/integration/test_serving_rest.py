"""The registered champion over REST on 127.0.0.1 (servers started and stopped by the test):
`mlflow models serve -m models:/NAME@champion` answers predictions, and `tlp serve-model`,
run from the venv's bin without the venv on PATH, refuses misuse with short 400/413 answers
(no server path, no stack trace; a path answered alike whether the file exists or not) and
stays up."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tasks.registry import aliases
from tests.registry_support import (
    MODEL,
    first_test_images,
    free_port,
    open_store,
    register,
    start_process,
    stop_process,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def post(url: str, payload: dict | bytes) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def png_base64(height: int, width: int) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def champion(gate_candidates, tmp_path_factory):
    """(store URI, 20 test images, their labels as the pyfunc predicts them in-process)."""
    import mlflow

    base = tmp_path_factory.mktemp("rest")
    project = gate_candidates.project
    uri = f"sqlite:///{base}/mlflow.db"
    exp = open_store(uri, project)
    version = register(gate_candidates.strong, project, exp)
    aliases.move_champion(base, MODEL, version, None, "manual-promote", "serve test")
    images = np.stack(first_test_images(project / "data" / "target", 20, 1))
    local = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(images)
    return uri, images, local["label"].tolist()


def test_served_champion_answers_rest_predictions(champion, tmp_path):
    uri, images, labels = champion
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
        status, answer = post(url, {"inputs": images.tolist()})
        assert status == 200
        assert [a["label"] for a in answer["predictions"]] == labels
        assert all(abs(sum(a["probabilities"]) - 1) < 1e-4 for a in answer["predictions"])
        one = post(url, {"inputs": [images[0].tolist()]})[1]["predictions"]
        assert len(one) == 1 and one[0]["label"] == labels[0]
        status, answer = post(url, {"inputs": ["/etc/passwd"]})  # MLflow's own server, too
        assert status == 400 and "stack_trace" not in answer
    finally:
        stop_process(proc)
    assert proc.poll() is not None


def test_serve_model_refuses_misuse_briefly_and_stays_up(champion, tmp_path):
    uri, images, labels = champion
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    port = free_port()
    env = {  # the venv's tlp, without the venv on PATH (no activation)
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        "TLP_TRACKING_URI": uri,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    tlp = Path(sys.executable).parent / "tlp"
    args = [str(tlp), "-C", str(tmp_path), "serve-model", "--port", str(port)]
    args += ["--set", f"registry.model_name={MODEL}"]  # serves models:/MODEL@champion
    proc = start_process([*args, "--max-request-mb", "1"], env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, tmp_path / "serve.log")
        url = f"http://127.0.0.1:{port}/invocations"
        paths = [post(url, {"inputs": [p]}) for p in ("/etc/passwd", "/nonexistent", "/root")]
        assert paths[0] == paths[1] == paths[2]
        assert paths[0][0] == 400 and "/etc" not in json.dumps(paths[0][1])
        big = ("[" + ",".join(["[" + ",".join(["0"] * 1000) + "]"] * 1000) + "]").encode()
        assert post(url, b'{"inputs": [' + big + b"]}")[0] == 413  # 2 MB over 1 MiB
        nan = [[float("nan")] * 8] * 8
        refused = [
            post(url, {"inputs": [nan]}),
            post(url, b'{"inputs": [[0, 1], '),
            post(url, {"inputs": [png_base64(5000, 5000)]}),  # 25 Mpixels, a small body
            post(url, {"inputs": 5}),
        ]
        assert [status for status, _ in refused] == [400, 400, 400, 400]
        assert "NaN" in refused[0][1]["message"]
        assert refused[1][1]["message"] == "the request body is not valid JSON"
        assert "5000x5000 = 25,000,000 pixels" in refused[2][1]["message"]
        for _, answer in [*paths, *refused]:
            text = json.dumps(answer)
            assert len(text) < 300
            assert not any(s in text for s in ("Traceback", "site-packages", "stack_trace"))
        status, answer = post(url, {"inputs": images.tolist()})
        assert status == 200 and [a["label"] for a in answer["predictions"]] == labels
        assert proc.poll() is None
    finally:
        stop_process(proc)
