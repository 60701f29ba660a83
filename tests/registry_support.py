"""Cheap real models for registry tests: uci-digits as the frozen target, one resnet10t
trained for a few epochs (strong) and one never trained (weak), registered in a real
SQLite MLflow store in a temp dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL = "tlp-gate"


@dataclass
class Candidates:
    project: Path  # holds data/target (the frozen test split) and .tlp/ (the alias event log)
    tracking_uri: str
    strong: Path  # checkpoint dirs
    weak: Path


def build_target(project: Path) -> Path:
    from tasks.core.params import default_section
    from tasks.data.datasets import prepare_dataset

    spec = default_section(
        "data.source", builtin="uci-digits", test_fraction=0.3, labels_per_class=40
    )
    prepare_dataset(spec, split_seed=0, out_dir=project / "data" / "target")
    return project / "data" / "target"


def first_test_rows(target: Path, n: int):
    """The first ``n`` manifest rows of the target's test split."""
    from tasks.data.manifest import read_manifest

    manifest = read_manifest(target)
    return manifest[manifest["split"] == "test"].head(n)


def first_test_bytes(target: Path, n: int) -> list[bytes]:
    """The encoded bytes of the first ``n`` test images, read from the target's shards."""
    from tasks.data.shards import read_image_bytes

    return read_image_bytes(target, first_test_rows(target, n))


def first_test_images(target: Path, n: int, channels: int = 1) -> list:
    """The first ``n`` test images decoded (uint8 arrays), read from the target's shards."""
    from tasks.data.loading import decode_rows

    return decode_rows(target, first_test_rows(target, n), channels)


def first_test_files(target: Path, n: int, out_dir: Path) -> list[Path]:
    """The first ``n`` test images written back as files under ``out_dir`` (their original
    relative names), for what reads files: ``tlp predict`` on paths, a pyfunc given paths."""
    from tasks.data.shards import export_images

    return export_images(target, first_test_rows(target, n), out_dir)


def train_checkpoint(target: Path, out: Path, epochs: int) -> Path:
    """resnet10t on uci-digits' train split; ``epochs=0`` leaves the seeded random init."""
    import torch

    from tasks.core.params import default_section
    from tasks.data.loading import load_tensors
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint
    from tasks.modeling.training import fit

    torch.set_num_threads(2)
    cfg = default_section(
        "preprocess", image_size=16
    )  # 4x cheaper than the pipeline's 32; same code
    inputs, labels, classes = load_tensors(target, "train", cfg)
    model = create_model("resnet10t", len(classes), cfg.channels, seed=0)
    if epochs:
        train_cfg = default_section(
            "transfer",
            epochs=epochs,
            batch_size=16,
            lr=3e-3,
            augment_shift=1,
            warmup_epochs=0,
            min_steps=0,
        )
        fit(model, (inputs, labels), train_cfg, seed=0)
    card = ModelCard(arch="resnet10t", classes=classes, preprocess=cfg, strategy=f"e{epochs}")
    return save_checkpoint(model.eval(), card, out)


def build_candidates(base: Path) -> Candidates:
    project = base / "project"
    target = build_target(project)
    return Candidates(
        project=project,
        tracking_uri=f"sqlite:///{base}/mlflow.db",
        strong=train_checkpoint(target, base / "ckpt" / "strong", epochs=4),
        weak=train_checkpoint(target, base / "ckpt" / "weak", epochs=0),
    )


def open_store(tracking_uri: str, project: Path) -> str:
    """Point MLflow at a store (SQLite file or server URL); returns the experiment id."""
    from tasks.core import tracking

    return tracking.configure(tracking_uri, project, "registry-tests")


def register(ckpt: Path, project: Path, experiment_id: str, name: str = MODEL) -> str:
    """Log and register one checkpoint the way the register stage does; returns the version."""
    import mlflow

    from tasks.registry import publishing as registry

    example = first_test_bytes(project / "data" / "target", 1)[0]
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(ckpt, name, example)
    return str(info.registered_model_version)


def register_project(base: Path, source_project: Path, ckpt: Path) -> Path:
    """A DVC project holding what the register stage reads: the target of ``source_project``,
    one candidate checkpoint (as ``full``) and the evaluate stage's choice of it."""
    import json
    import shutil

    from tests.conftest import make_dvc_project

    project = make_dvc_project(base)
    shutil.copytree(source_project / "data" / "target", project / "data" / "target")
    shutil.copytree(ckpt, project / "models" / "candidates" / "full")
    metrics = {"best": "full", "candidates": {"full": {"accuracy": 0.9}}}
    (project / "reports").mkdir()
    (project / "reports" / "metrics.json").write_text(json.dumps(metrics))
    return project


def run_register(project: Path, *overrides: str) -> dict:
    """The register stage on ``project`` (params.yaml + overrides), the store next to it."""
    from tasks.core.context import open_context
    from tasks.core.params import resolve_params
    from tasks.stages import get_stage

    store = f"storage.tracking_uri=sqlite:///{project.parent}/mlflow.db"
    params = resolve_params(project / "params.yaml", overrides=[store, *overrides])
    return get_stage("register").run(open_context(project, params))


def gate_params(**promote):
    """The real params.yaml, with the gate rules overridden."""
    from tasks.core.params import resolve_params

    root = Path(__file__).resolve().parents[1]
    return resolve_params(
        root / "params.yaml",
        overrides=[f"promote.{k}={v}" for k, v in {"retry_delay": 0.1, **promote}.items()],
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(args: list[str], env: dict, log: Path):
    """Start a server in its own process group (so all its workers can be stopped)."""
    import subprocess

    return subprocess.Popen(
        args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(proc) -> None:
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, proc, log: Path, timeout: float = 120.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")
