"""Real servers for tests, on 127.0.0.1 only, started by the test and stopped after it:
a private PostgreSQL cluster (Debian's server binaries), moto's S3 server, and the MLflow
and Prefect servers through the same helpers ``tlp server`` uses (flows/servers.py)."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            host=HOST,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A throw-away cluster in a temp dir; password auth; listens on 127.0.0.1 only."""
    bindir = pg_bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: install Debian's postgresql package")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root and shutil.which("runuser") is None:
        pytest.skip("running as root and runuser is missing: initdb refuses to run as root")
    base = Path(tempfile.mkdtemp(prefix="tlp-pg-", dir="/tmp"))
    password = secrets.token_urlsafe(16)
    (base / "pw").write_text(password)
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(base / "pw", "postgres", "postgres")
    data, port = base / "data", free_port()
    run = lambda *argv: subprocess.run([*prefix, *argv], check=True, capture_output=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "tlp", "--auth=scram-sha-256",
            f"--pwfile={base / 'pw'}", "--no-sync")  # fmt: skip
        options = f"-c listen_addresses={HOST} -p {port} -k {base} -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
            "-w", "-t", "60", "start")  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started: {exc.stderr.decode()[-500:]} {log[-500:]}")
    try:
        yield Postgres(port, "tlp", password)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{what} did not answer {url}")


def stop_process(proc: subprocess.Popen) -> None:
    from flows.servers import stop

    stop([proc])


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs(self.env))

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _boto_kwargs(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@contextmanager
def moto_s3(buckets: list[str], log_dir: Path) -> Iterator[S3]:
    """moto's server mode as the S3 endpoint (the DVC remote, MLflow's artifact store)."""
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "tlp-test-key",
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(12),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    argv = [str(Path(sys.executable).parent / "moto_server"), "-H", HOST, "-p", str(port)]
    log = (log_dir / "moto.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"{endpoint}/moto-api/", proc, "moto_server", 60)
        s3 = S3(endpoint, env)
        for bucket in buckets:
            s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        stop_process(proc)
        log.close()
