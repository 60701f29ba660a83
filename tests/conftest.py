"""Shared fixtures: the real params.yaml shrunk to the smoke profile, and a real temp project
(git + DVC) holding copies of the files DVC tracks, so tests run the code users run.

Every test runs offline: the Hugging Face libraries are told so (``HF_HUB_OFFLINE``, inherited
by every subprocess), and a socket guard in this process refuses connections to anything but
loopback, so a download (hub weights, a dataset URL) fails the test instead of passing
quietly on a machine that has a network. Servers the tests start listen on 127.0.0.1."""

from __future__ import annotations

import atexit
import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

for key, value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",  # DVC ignores DO_NOT_TRACK: each `dvc` command left a /tmp file
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(key, value)
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[key] = "1"


def _is_local(address) -> bool:
    """Loopback (or the unspecified address, which Linux connects to loopback)."""
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:  # a name other than localhost: it would need the network to resolve
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or ip.is_unspecified


def _guard_sockets() -> None:
    """Refuse IP connections to anything but loopback, for every test in this process."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    ip_families = (socket.AF_INET, socket.AF_INET6)

    def connect(self, address):
        if self.family in ip_families and not _is_local(address):
            raise OSError(errno.ENETUNREACH, f"tests run offline: connection to {address} refused")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in ip_families and not _is_local(address):
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


_guard_sockets()
# tlp (for `dvc repro`) and dvc must be found next to the interpreter running the tests
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session", autouse=True)
def _temp_dir_removed_at_the_end(tmp_path_factory):
    """The suite's temp directory (TMPDIR, inherited by every subprocess) is one folder,
    removed at the end: some tools never clean theirs (torchrun's log folders, MLflow's model
    downloads from a tracking server), and a CI machine's /tmp would fill up run after run.
    pytest's own tmp_path folders stay where pytest keeps them (its last three runs)."""
    tmp_path_factory.getbasetemp()  # fixed before TMPDIR moves
    folder = tempfile.mkdtemp(prefix="tlp-tests-")  # short: unix socket paths stay short
    # removed at exit, after the exit handlers registered later (prefect_test_harness
    # removes its own folder in there)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", folder)
        patch.setattr(tempfile, "tempdir", folder)
        yield


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture
def smoke_params():
    from tasks.core.params import resolve_params

    return resolve_params(ROOT / "params.yaml", "smoke")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=tlp-test", "-c", "user.email=tlp@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def make_dvc_project(base: Path) -> Path:
    """A fresh git + DVC repo holding the project's params, dvc.yaml and stage code, with the
    .gitignore of an experiment repository (experiment.gitignore), not the tool's own."""
    from tasks.core.params import resolve_params, write_resolved

    project = base / "project"
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copy2(ROOT / "experiment.gitignore", project / ".gitignore")
    shutil.copytree(ROOT / "tasks", project / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    # dvc.yaml's `vars` read the candidate stages from it: DVC parses no stage without it
    write_resolved(resolve_params(project / "params.yaml"), project)
    _git(project, "init", "-q")
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True, capture_output=True
    )
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "test project")
    return project


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    return make_dvc_project(tmp_path)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server and database for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def gate_candidates(tmp_path_factory):
    """A strong and a weak checkpoint plus the frozen uci-digits test split (built once)."""
    from tests.registry_support import build_candidates

    return build_candidates(tmp_path_factory.mktemp("gate"))
