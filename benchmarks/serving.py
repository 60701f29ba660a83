"""Benchmark: the registered model put to work, pyfunc (torch) against its ONNX export.

    python benchmarks/serving.py                  # default experiment, 200 requests per server
    python benchmarks/serving.py --quick          # smoke profile, 40 requests, one batch round
    python benchmarks/serving.py --project DIR    # reuse DIR's last registered version

1. A registered model: ``tlp run --profile P --set export.int8=true`` in a fresh git + DVC
   project in a temp dir (or the last version ``--project`` registered, with its
   ``reports/export.json``). The register stage exports it to ONNX and checks parity on the
   whole target test split; with INT8 it also quantizes and measures it.
2. Parity (max absolute logit difference, identical labels) and INT8 (accuracy change, size
   and latency ratios) as the register stage wrote them to ``reports/export.json``.
3. REST latency, single-image requests in a bounded sequential loop on 127.0.0.1, one
   server at a time, each started and stopped here with one worker: ``mlflow models serve``
   of the registered pyfunc (raw uint8 image in, preprocessing and torch inside), then of
   the same ONNX file logged with MLflow's ONNX flavor (``mlflow.onnx.log_model``: the
   same scoring server on onnxruntime, with as many intra-op threads as the pyfunc gives
   torch). The ONNX model takes preprocessed float32 input, so the client preprocesses:
   that cost per image (``tasks.data.preprocessing.preprocess``) is measured and reported
   next to it. Each server answers 10 warm-up requests first, not counted.
4. Batch prediction: ``tlp predict`` on the target's manifest (every image of the target,
   read from its shards) with ``--runtime onnx`` and ``--runtime pyfunc``, alternating, the
   images/s it reports (reading, preprocessing and inference; model loading excluded) and the
   wall time of the whole command.

Prints the JSON and writes ``serving.json`` and ``serving.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.orchestration import TLP, make_project  # noqa: E402

WARMUP = 10


def bench_env(work: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": str(ROOT),  # this checkout's code, also in the model servers
        "PATH": f"{TLP.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key in ("PREFECT_API_URL", "TLP_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def run(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return time.perf_counter() - started, out.stdout


def trained_project(work: Path, profile: str, extra: list[str], env: dict) -> Path:
    project = make_project(work)
    argv = [str(TLP), "-C", str(project), "run", "--profile", profile]
    argv += ["--set", "export.int8=true", *[a for s in extra for a in ("--set", s)]]
    print("+ " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    run(argv, env)
    return project


def registered(project: Path) -> dict:
    """The last version the project registered, its params, store and export report."""
    from tasks.core.params import load_resolved
    from tasks.core.params.storage import resolve_tracking_uri

    params = load_resolved(project)
    registration = json.loads((project / "reports" / "registration.json").read_text())
    export = json.loads((project / "reports" / "export.json").read_text())
    if not export.get("onnx"):
        raise SystemExit(f"{project}: the registered version has no ONNX export")
    return {
        "params": params,
        "tracking_uri": resolve_tracking_uri(params.storage.tracking_uri, project),
        "registration": registration,
        "export": export,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_serve_argv(uri: str, port: int) -> list[str]:
    """``mlflow models serve`` of one model URI on 127.0.0.1, one worker."""
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    return [*argv, "--workers", "1"]


class Server:
    """A model server on 127.0.0.1 and a free port, started in a session of its own and
    stopped (the whole session) on exit: ``mlflow models serve`` of one model URI unless
    ``command`` (port -> argv) says otherwise. ``cwd``: where it runs (``python -m`` puts
    it first on ``sys.path``, before PYTHONPATH)."""

    def __init__(self, uri: str, env: dict, log: Path, command=None, cwd=None) -> None:
        self.port = free_port()
        argv = (command or mlflow_serve_argv)(uri, self.port)
        self.log = log
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"model server exited:\n{self.log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"model server did not answer:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # a worker stuck in a request (a FIFO's open) can outlive the server's parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def latencies(port: int, bodies: list[bytes], requests: int, max_seconds: float) -> dict:
    """Sequential POSTs on one keep-alive connection: WARMUP untimed, then ``requests`` timed
    (or fewer when ``max_seconds`` runs out); the answers of the timed ones are kept, with
    the index of the body each answers (request i sends body i mod len(bodies))."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    times, answers, sent, deadline = [], [], [], time.monotonic() + max_seconds
    for i in range(WARMUP + requests):
        if time.monotonic() > deadline:
            break
        body = bodies[i % len(bodies)]
        started = time.perf_counter()
        conn.request("POST", "/invocations", body, headers)
        response = conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:500]!r}")
        if i >= WARMUP:
            times.append(elapsed * 1000)
            answers.append(json.loads(data)["predictions"])
            sent.append(i % len(bodies))
    conn.close()
    return {**summary_ms(times), "answers": answers, "sent": sent}


def summary_ms(times: list[float]) -> dict:
    import numpy as np

    return {
        "n": len(times),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "max_ms": max(times),
    }


def test_images(project: Path, channels: int, n: int):
    """``n`` test images (the split repeated as needed), decoded from the target's shards."""
    from tasks.data.loading import decode_rows
    from tasks.data.manifest import read_manifest

    target = project / "data" / "target"
    manifest = read_manifest(target)
    test = manifest[manifest["split"] == "test"]
    rows = test.iloc[[i % len(test) for i in range(n)]]
    return decode_rows(target, rows, channels), rows["class_name"].tolist()


def log_onnx_flavor(onnx_path: Path, example, threads: int) -> str:
    """The export as MLflow's ONNX flavor in the benchmark's store (not registered): what
    ``mlflow models serve`` serves on onnxruntime. Returns its model URI."""
    import mlflow
    import onnx

    with mlflow.start_run(run_name="serving-benchmark-onnx"):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="onnx",
            input_example={"images": example},
            pip_requirements=["onnxruntime", "onnx", f"mlflow=={mlflow.__version__}"],
            onnx_session_options={"intra_op_num_threads": threads},
        )
    return info.model_uri


def rest(project: Path, model: dict, requests: int, max_seconds: float, env: dict, work: Path):
    import numpy as np

    from tasks.core import tracking
    from tasks.data.preprocessing import preprocess
    from tasks.registry.export import OnnxClassifier

    params = model["params"]
    tracking.configure(params.storage.tracking_uri, project, "serving-benchmark")
    onnx_path = project / model["export"]["onnx"]
    cfg = OnnxClassifier(onnx_path).preprocess
    images, truth = test_images(project, cfg.channels, requests)
    client_ms = []
    inputs = []
    for image in images:
        started = time.perf_counter()
        x = preprocess([image], cfg).numpy()
        client_ms.append((time.perf_counter() - started) * 1000)
        inputs.append(x)
    threads = max(1, min(4, os.cpu_count() or 1))  # what the pyfunc gives torch (serving.py)
    onnx_uri = log_onnx_flavor(onnx_path, inputs[0], threads)
    version = model["registration"]["version"]
    pyfunc_uri = f"models:/{model['registration']['model_name']}/{version}"
    env = {**env, "MLFLOW_TRACKING_URI": model["tracking_uri"]}
    pyfunc_bodies = [json.dumps({"inputs": [im.tolist()]}).encode() for im in images]
    onnx_bodies = [json.dumps({"inputs": {"images": x.tolist()}}).encode() for x in inputs]
    out = {}
    for name, uri, bodies in (
        ("pyfunc", pyfunc_uri, pyfunc_bodies),
        ("onnx", onnx_uri, onnx_bodies),
    ):
        print(f"+ mlflow models serve -m {uri} ({name})", file=sys.stderr, flush=True)
        with Server(uri, env, work / f"serve-{name}.log") as server:
            out[name] = latencies(server.port, bodies, requests, max_seconds)
        out[name]["model_uri"] = uri
    pyfunc_labels = [a[0]["label"] for a in out["pyfunc"].pop("answers")]
    classes = OnnxClassifier(onnx_path).classes
    onnx_labels = [classes[int(np.argmax(first_logits(a)))] for a in out["onnx"].pop("answers")]
    sent = out["pyfunc"].pop("sent")  # both loops send the same bodies in the same order
    out["onnx"].pop("sent")
    n = min(len(pyfunc_labels), len(onnx_labels))  # the same unless a loop ran out of time
    answered = [truth[i] for i in sent[:n]]
    pairs = zip(pyfunc_labels[:n], onnx_labels[:n], answered, strict=True)
    agree, correct = zip(*((p == o, p == t) for p, o, t in pairs), strict=True)
    out["labels_agree"] = sum(agree) / n
    out["pyfunc_accuracy"] = sum(correct) / n
    out["onnx_client_preprocess_ms"] = summary_ms(client_ms)
    out["onnx_p50_with_client_preprocess_ms"] = (
        out["onnx"]["p50_ms"] + out["onnx_client_preprocess_ms"]["p50_ms"]
    )
    out["p50_ratio_onnx_over_pyfunc"] = out["onnx"]["p50_ms"] / out["pyfunc"]["p50_ms"]
    out["p95_ratio_onnx_over_pyfunc"] = out["onnx"]["p95_ms"] / out["pyfunc"]["p95_ms"]
    out["threads"] = threads
    return out


def first_logits(predictions):
    """The logits of a one-image answer of the ONNX flavor's server, whichever JSON shape
    it takes for a dict input ({"logits": [[...]]} or [{"logits": [...]}])."""
    if isinstance(predictions, dict):
        predictions = predictions["logits"]
    first = predictions[0]
    return first["logits"] if isinstance(first, dict) else first


PER_SECOND = re.compile(r"in ([0-9.]+) s: ([0-9.]+) images/s")


def batch(project: Path, model: dict, rounds: int, env: dict) -> dict:
    """``tlp predict`` over every target image, each runtime ``rounds`` times, alternating."""
    store = f"storage.tracking_uri={model['tracking_uri']}"
    ref = f"{model['registration']['model_name']}/{model['registration']['version']}"
    results: dict[str, dict[str, list[float]]] = {}
    for i in range(rounds):
        order = ("onnx", "pyfunc") if i % 2 == 0 else ("pyfunc", "onnx")
        for runtime in order:
            argv = [str(TLP), "-C", str(project), "predict", "data/target/manifest.parquet"]
            argv += ["--model", ref, "--runtime", runtime, "--out", f"bench-{runtime}.parquet"]
            argv += ["--set", store]
            wall, stdout = run(argv, env)
            found = PER_SECOND.search(stdout)
            if not found:
                raise RuntimeError(f"no throughput line in: {stdout}")
            r = results.setdefault(runtime, {"images_per_second": [], "wall_seconds": []})
            r["images_per_second"].append(float(found.group(2)))
            r["wall_seconds"].append(wall)
    images = int(re.search(r"predicted \d+ of (\d+)", stdout).group(1))
    out = {"images": images, "rounds": rounds}
    for runtime, r in results.items():
        out[runtime] = {
            "images_per_second_median": statistics.median(r["images_per_second"]),
            "wall_seconds_median": statistics.median(r["wall_seconds"]),
            **r,
        }
    out["speedup_onnx_over_pyfunc"] = (
        out["onnx"]["images_per_second_median"] / out["pyfunc"]["images_per_second_median"]
    )
    return out


def markdown(result: dict) -> str:
    parity, q8, rest_, batch_ = result["parity"], result["int8"], result["rest"], result["batch"]
    lines = [
        "# Serving: pyfunc (torch) against the ONNX export",
        "",
        f"`{result['command']}`",
        "",
        f"Model: {result['model']} ({result['arch']}, profile `{result['profile']}`), "
        f"{result['machine']}.",
        "",
        f"**Parity** on the whole target test split ({parity['n']} images): max absolute "
        f"logit difference {parity['max_abs_logit_diff']:.2e} (limit {parity['atol']:g}), "
        f"labels identical: {parity['labels_identical']}.",
        "",
    ]
    if q8:
        lines += [
            f"**INT8** (onnxruntime static quantization, QDQ): accuracy "
            f"{q8['accuracy_float']:.4f} -> {q8['accuracy_int8']:.4f} "
            f"({q8['accuracy_change']:+.4f}), size x{q8['size_ratio']:.3f}, latency "
            f"x{q8['latency_ratio']:.2f} (batches of 64, {q8['n']} images).",
            "",
        ]
    lines += [
        f"**REST**, {rest_['pyfunc']['n']} single-image requests per server, sequential, "
        f"one worker, {rest_['threads']} inference threads:",
        "",
        "| server | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("pyfunc", "mlflow models serve, pyfunc (torch, raw image in)"),
        ("onnx", "mlflow models serve, ONNX flavor (onnxruntime, preprocessed input)"),
    ):
        r = rest_[name]
        lines.append(f"| {label} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['mean_ms']:.2f} |")
    pre = rest_["onnx_client_preprocess_ms"]
    lines += [
        "",
        f"Client-side preprocessing for the ONNX server: p50 {pre['p50_ms']:.2f} ms per image; "
        f"labels agree on {100 * rest_['labels_agree']:.1f}% of the requests.",
        "",
        f"**Batch** (`tlp predict`, {batch_['images']} images, median of {batch_['rounds']}):",
        "",
        "| runtime | images/s | wall s (whole command) |",
        "|---|---|---|",
    ]
    for name in ("onnx", "pyfunc"):
        r = batch_[name]
        lines.append(
            f"| {name} | {r['images_per_second_median']:.0f} | {r['wall_seconds_median']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke profile, 40 requests")
    parser.add_argument("--profile", default=None, help="params profile (default: default)")
    parser.add_argument("--project", type=Path, help="reuse this project's registered model")
    parser.add_argument("--requests", type=int, default=None, help="per server (default 200)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per server's loop")
    parser.add_argument("--batch-rounds", type=int, default=None, help="default 3 (quick 1)")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--keep", action="store_true", help="keep the temp project")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    profile = args.profile or ("smoke" if args.quick else "default")
    requests = args.requests or (40 if args.quick else 200)
    rounds = args.batch_rounds or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="tlp-bench-serving-"))
    env = bench_env(work)
    try:
        project = args.project.resolve() if args.project else None
        project = project or trained_project(work, profile, args.set, env)
        model = registered(project)
        export = model["export"]
        rest_ = rest(project, model, requests, args.max_seconds, env, work)
        batch_ = batch(project, model, rounds, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    registration = model["registration"]
    result = {
        "command": "python benchmarks/serving.py " + " ".join(argv or sys.argv[1:]),
        "profile": profile if not args.project else f"project {args.project}",
        "model": f"{registration['model_name']} version {registration['version']}",
        "strategy": registration["strategy"],
        "arch": model["params"].model.arch,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "opset": export["opset"],
        "onnx_size_bytes": export["size_bytes"],
        "export_seconds": export.get("seconds"),
        "parity": export["parity"],
        "int8": export.get("int8"),
        "rest": rest_,
        "batch": batch_,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
