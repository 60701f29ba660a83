"""Benchmark: the served model under misuse: 20 bad requests, then 200 good ones.

    python benchmarks/serving_misuse.py                      # smoke model, tlp serve-model
    python benchmarks/serving_misuse.py --project DIR        # reuse DIR's last registered version
    python benchmarks/serving_misuse.py --server mlflow      # `mlflow models serve` instead
    python benchmarks/serving_misuse.py --code /other/checkout --server mlflow   # "before"

1. A registered model, set up as ``benchmarks/serving.py`` sets it up (``trained_project``
   with the smoke profile in a temp git + DVC project and store, or ``--project``'s last
   version).
2. One server on 127.0.0.1, started and stopped here: ``tlp serve-model`` (the default) or
   ``mlflow models serve``, running the model code of ``--code`` (default: this checkout).
3. 20 bad requests, one at a time on fresh connections with a 30 s timeout: empty body,
   invalid JSON, wrong JSON shapes, a 10000x10000 array, NaN, infinities, /etc/passwd,
   /nonexistent, /root, a named pipe, a huge base64 string, wrong dtype, a 5-D array, ...;
   for each, the status (or "timeout"), the time, whether ``/ping`` still answers after, and
   the first 160 characters of the answer.
4. 200 good single-image requests in a bounded sequential loop (``serving.latencies``):
   p50/p95 latency, all 200 answered.
5. The server's resident memory (its whole process session) before the bad requests and
   after everything; and whether any answer reveals the server: the three path requests
   answer identically (an existing file, a missing one, a directory), and no answer holds
   "/etc", "Traceback" or "site-packages".

Prints the JSON and writes ``serving_misuse.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    Server,
    bench_env,
    latencies,
    registered,
    test_images,
    trained_project,
)

LEAKS = ("/etc", "Traceback", "site-packages")
PATH_CASES = ("path /etc/passwd (exists)", "path /nonexistent", "path /root (a directory)")


def inputs(value) -> bytes:
    return json.dumps({"inputs": value}).encode()


def huge_array_body(side: int = 10_000) -> bytes:
    """``{"inputs": [A]}`` with A a side x side array of zeros, built as text (200 MB)."""
    row = "[" + ",".join(["0"] * side) + "]"
    return ('{"inputs": [[' + ",".join([row] * side) + "]]}").encode()


def bad_requests(image, fifo: Path) -> list[tuple[str, bytes, str]]:
    """(case, body, content type) of each bad request."""
    json_type = "application/json"
    small = image[:4, :4].tolist()
    nan = [[math.nan] * 8] * 8
    inf = [[math.inf] * 8] * 8
    return [
        ("empty body", b"", json_type),
        ("invalid JSON", b'{"inputs": [[0, 1], ', json_type),
        ("JSON list, not an object", b"[1, 2, 3]", json_type),
        ("JSON object without inputs", b'{"data": [[0, 1]]}', json_type),
        ("inputs a number", inputs(5), json_type),
        ("10000x10000 array", huge_array_body(), json_type),
        ("NaN image", inputs([nan]), json_type),
        ("infinite image", inputs([inf]), json_type),
        (PATH_CASES[0], inputs(["/etc/passwd"]), json_type),
        (PATH_CASES[1], inputs(["/nonexistent"]), json_type),
        (PATH_CASES[2], inputs(["/root"]), json_type),
        ("named pipe path", inputs([str(fifo)]), json_type),
        ("huge base64 string (24 MB)", inputs(["A" * (24 * 2**20)]), json_type),
        ("wrong dtype (strings)", inputs([[["a", "b"], ["c", "d"]]]), json_type),
        ("5-D array", inputs([[[[[0, 1]]]]]), json_type),
        ("values out of range (300, -1)", inputs([[[300, -1], [0, 0]]]), json_type),
        ("ragged array", inputs([[[0, 1], [2]]]), json_type),
        (
            "corrupt base64 PNG",
            inputs([base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()]),
            json_type,
        ),
        ("300 images in one request", inputs([small] * 300), json_type),
        ("CSV body", b"a,b\n1,2\n", "text/csv"),
    ]


def send(port: int, body: bytes, content_type: str, timeout: float) -> tuple[object, str, float]:
    """(status or "timeout"/"closed", answer text, seconds) of one POST on a new connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = conn.getresponse()
        status, text = response.status, response.read().decode("utf-8", "replace")
    except TimeoutError:
        status, text = "timeout", ""
    except (ConnectionError, http.client.HTTPException) as exc:
        status, text = "closed", type(exc).__name__
    finally:
        conn.close()
    return status, text, time.perf_counter() - started


def up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


def session_rss_mb(sid: int) -> float:
    """Resident memory of every process in the server's session (uvicorn under mlflow)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                total += proc.memory_info().rss
        except (psutil.Error, OSError):
            continue
    return total / 2**20


def serve_command(kind: str, project: Path):
    if kind == "mlflow":
        return None  # serving.Server's default: mlflow models serve
    return lambda uri, port: [
        sys.executable, "-m", "flows.cli", "-C", str(project), "serve-model", uri,
        "--port", str(port),
    ]  # fmt: skip


def misuse(port: int, cases, timeout: float) -> list[dict]:
    rows = []
    for name, body, content_type in cases:
        status, text, seconds = send(port, body, content_type, timeout)
        rows.append(
            {
                "case": name,
                "status": status,
                "seconds": round(seconds, 3),
                "up_after": up(port),
                "answer": text[:160],
                "leaks": [s for s in LEAKS if s in text],
                "_text": text,
            }
        )
        print(f"  {name}: {status} in {seconds:.2f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="reuse this project's registered model")
    parser.add_argument("--profile", default="smoke", help="params profile (default: smoke)")
    parser.add_argument("--server", choices=("tlp", "mlflow"), default="tlp")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout the server runs")
    parser.add_argument("--good", type=int, default=200, help="good requests (default 200)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per bad request, seconds")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="good loop bound")
    parser.add_argument("--keep", action="store_true", help="keep the temp project")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tlp-bench-misuse-"))
    env = bench_env(work)
    try:
        project = args.project.resolve() if args.project else None
        project = project or trained_project(work, args.profile, [], env)
        model = registered(project)
        registration = model["registration"]
        uri = f"models:/{registration['model_name']}/{registration['version']}"
        channels = model["params"].preprocess.channels or 1
        images, _ = test_images(project, channels, 20)
        fifo = work / "pipe"
        os.mkfifo(fifo)
        server_env = {
            **env,
            "MLFLOW_TRACKING_URI": model["tracking_uri"],
            "PYTHONPATH": str(args.code.resolve()),
        }
        cases = bad_requests(images[0], fifo)
        print(f"+ {args.server} server of {uri} ({args.code})", file=sys.stderr, flush=True)
        command = serve_command(args.server, project)
        # run in the temp dir: `python -m` puts the cwd before PYTHONPATH (--code)
        with Server(uri, server_env, work / "serve.log", command, cwd=work) as s:
            sid = os.getsid(s.proc.pid)
            rss_before = session_rss_mb(sid)
            rows = misuse(s.port, cases, args.timeout)
            bodies = [json.dumps({"inputs": [im.tolist()]}).encode() for im in images]
            try:
                good = latencies(s.port, bodies, args.good, args.max_seconds)
                good.pop("answers"), good.pop("sent")
            except (RuntimeError, OSError) as exc:
                good = {"n": 0, "error": str(exc)[:300]}
            rss_after = session_rss_mb(sid)
            still_up = up(s.port)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    paths = [r["_text"] + str(r["status"]) for r in rows if r["case"] in PATH_CASES]
    for r in rows:
        r.pop("_text")
    result = {
        "command": "python benchmarks/serving_misuse.py " + " ".join(argv or sys.argv[1:]),
        "server": "tlp serve-model" if args.server == "tlp" else "mlflow models serve",
        "code": str(args.code.resolve()),
        "model": f"{registration['model_name']} version {registration['version']}",
        "bad": rows,
        "bad_statuses": {r["case"]: r["status"] for r in rows},
        "all_bad_refused_4xx": all(
            isinstance(r["status"], int) and 400 <= r["status"] < 500 for r in rows
        ),  # fmt: skip
        "up_after_every_bad_request": all(r["up_after"] for r in rows),
        "path_answers_identical": len(set(paths)) == 1,
        "answers_with_leaks": [r["case"] for r in rows if r["leaks"]],
        "good": good,
        "up_at_end": still_up,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_misuse.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
