"""``tlp serve --upcoming`` and ``tlp ui`` as a user runs them (real processes, 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from flows.servers import stop
from tests.services import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
TLP = str(Path(sys.executable).parent / "tlp")


def test_serve_upcoming_lists_runs_in_the_time_zone_of_params():
    done = subprocess.run(
        [
            TLP,
            "-C",
            str(ROOT),
            "serve",
            "--upcoming",
            "3",
            "--set",
            "schedule.cron=30 6 * * 1",
            "--set",
            "schedule.timezone=America/New_York",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    times = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert len(times) == 3
    for stamp in times:
        assert "T06:30:00" in stamp and stamp.endswith(("-05:00", "-04:00"))  # EST / EDT


def test_serve_rejects_a_bad_cron_or_time_zone_before_serving():
    cases = [
        ("schedule.cron=61 * * * *", "schedule.cron"),
        ("schedule.timezone=Mars/Base", "schedule.timezone"),
    ]
    for bad, key in cases:
        done = subprocess.run(
            [TLP, "-C", str(ROOT), "serve", "--upcoming", "1", "--set", bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and f"tlp: params error: {key}" in done.stderr, done.stderr


def test_ui_serves_the_project_store_on_loopback(tmp_path):
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [TLP, "-C", str(ROOT), "ui", "--port", str(port), "--set", f"storage.tracking_uri={uri}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, "tlp ui", 120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"MLflow" in page.read()
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        bound = [line.split()[3] for line in listening.splitlines() if f":{port}" in line]
        assert bound and all(addr.startswith("127.0.0.1:") for addr in bound), bound
    finally:
        stop([proc])
