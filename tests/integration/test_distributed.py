"""DDP under torchrun, on CPU with gloo and 2 processes on loopback: the real training loop,
sharded data, and identical weights on both ranks afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.modeling.distributed import TimmDDP, shard

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_cover_the_data_with_equal_lengths():
    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    parts = [shard((x, y), r, 3, seed=0) for r in range(3)]
    assert {len(p[1]) for p in parts} == {4}
    assert set(torch.cat([p[1] for p in parts]).tolist()) == set(range(10))
    assert all(torch.equal(px[:, 0].long(), py) for px, py in parts)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_in_sync(tmp_path):
    from tasks.core.params import resolve_params, write_resolved
    from tasks.data.datasets import prepare_dataset
    from tasks.modeling.models import load_checkpoint

    project = tmp_path / "project"
    project.mkdir()
    params = resolve_params(
        ROOT / "params.yaml",
        "smoke",
        ["data.source.limit=400", "pretrain.epochs=3", "base.threads=1"],
    )
    write_resolved(params, project)
    prepare_dataset(params.data.source, params.data.split_seed, project / "data" / "source")
    torchrun = Path(sys.executable).parent / "torchrun"
    argv = [str(torchrun), "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d"]
    argv += [f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "-m", "tasks.modeling.distributed"]
    argv += ["-C", str(project), "--out", "models/ddp"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((project / "models" / "ddp" / "ddp.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    first, second = report["rank_weight_digests"]
    assert first == second  # DDP kept both ranks' weights identical
    losses = report["train_loss_per_epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert report["images_per_rank"] < params.data.source.limit  # each rank saw a shard
    model, card = load_checkpoint(project / "models" / "ddp")
    assert card.arch == params.model.arch


def test_ddp_wrapper_keeps_timm_parameter_groups(monkeypatch):
    """timm's optimizer factory sees the same layer groups through the DDP wrapper."""
    import torch.distributed as dist
    from timm.optim import create_optimizer_v2

    from tasks.modeling.models import create_model

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        bare = create_model("resnet10t", 10, 1, seed=0)
        wrapped = TimmDDP(create_model("resnet10t", 10, 1, seed=0))
        groups = [
            sorted((round(g["lr_scale"], 6), len(g["params"])) for g in opt.param_groups)
            for opt in (
                create_optimizer_v2(m, opt="adamw", lr=1e-3, layer_decay=0.75)
                for m in (bare, wrapped)
            )
        ]
        assert groups[0] == groups[1] and len(groups[0]) > 2
    finally:
        dist.destroy_process_group()
