"""Multi-GPU training: the project's one training loop (``tasks.modeling.training.fit``) under
``torchrun`` with DistributedDataParallel.

Each process trains on its own part of the data, streamed from its own run of the prepared
shards' row groups (padded to equal length, as ``DistributedSampler`` does, so every rank
takes the same number of steps) and DDP averages
the gradients, so all ranks hold identical weights after every step. NCCL on GPUs, gloo on
CPU (what the tests use: two processes on one machine).

    torchrun --nproc-per-node 4 -m tasks.modeling.distributed -C . --out models/source-ddp

pretrains the source model of the project (its prepared ``data/source`` and the ``pretrain``
params) on 4 GPUs; rank 0 alone logs, saves the safetensors checkpoint and the report.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tasks.modeling.training import History, fit


class TimmDDP(DistributedDataParallel):
    """DDP that still answers timm's optimizer factory (weight-decay exclusions, layer groups),
    so ``create_optimizer_v2`` builds the same parameter groups as for the bare model."""

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.module, "no_weight_decay", lambda: set())()
        return {f"module.{name}" for name in inner}

    def __getattr__(self, name: str) -> Any:
        if name == "group_matcher" and hasattr(self.module, "group_matcher"):
            return self._group_matcher
        return super().__getattr__(name)

    def _group_matcher(self, coarse: bool = False):
        from timm.models import group_parameters

        layer_of = group_parameters(self.module, self.module.group_matcher(coarse), reverse=True)
        last = max(layer_of.values())
        return lambda name: layer_of.get(name.removeprefix("module."), last)


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) outside torchrun."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """Join torchrun's process group (NCCL for CUDA, gloo for CPU); yields (rank, world)."""
    rank, local_rank, size = world()
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield rank, size
    finally:
        dist.destroy_process_group()


def shard(train: tuple[Any, torch.Tensor], rank: int, size: int, seed: int) -> tuple[Any, Any]:
    """This rank's part, padded so every rank has the same length: of streamed inputs
    (``tasks.data.streaming.ShardImages``), a disjoint run of the shards' row groups (so a
    rank reads only its own); of in-memory tensors, a part of a seeded shuffle."""
    inputs, labels = train
    if hasattr(inputs, "part"):
        mine = inputs.part(rank, size, seed)
        return mine, mine.labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    per_rank = -(-len(order) // size)  # ceil
    order = torch.cat([order, order[: per_rank * size - len(order)]])
    mine = order[rank::size]
    return inputs[mine], labels[mine]


def fit_ddp(
    model: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    cfg,
    *,
    seed: int,
    device: torch.device,
    **kwargs: Any,
) -> History:
    """``fit`` on this rank's shard with DDP; call inside ``process_group``."""
    rank, local_rank, size = world()
    model.to(device)
    ddp = TimmDDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if rank != 0:
        kwargs["on_epoch"] = None  # one rank reports (metrics, log lines, bar)
        kwargs["progress"] = None
    return fit(ddp, shard(train, rank, size, seed), cfg, seed=seed, device=device, **kwargs)


def weights_digest(model: torch.nn.Module) -> str:
    """Hash of every parameter: equal across ranks when DDP kept them in sync. (BatchNorm
    running stats are not parameters: each rank updates them on its own batches, DDP copies
    rank 0's at the next forward, and rank 0's are the ones saved.)"""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def pretrain_distributed(project_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """Pretrain the project's source model on every torchrun rank; rank 0 saves and reports."""
    from tasks.core.context import Layout, write_json
    from tasks.core.params import load_resolved
    from tasks.data.loading import load_source_tensors
    from tasks.modeling.batches import accuracy
    from tasks.modeling.models import ModelCard, create_model, resolve_device, save_checkpoint
    from tasks.modeling.pretraining import decoded_cache_dir

    p = load_resolved(project_dir)
    if p.pretrain.objective != "supervised":  # not silently supervised: say what it does
        raise SystemExit(
            f"pretrain.objective: {p.pretrain.objective}: DDP pretraining is supervised only; "
            "run the pretrain stage (tlp stage pretrain) for self-supervised pretraining"
        )
    layout = Layout(project_dir)
    torch.set_num_threads(p.base.threads)
    # streamed: each rank reads its own row groups, decoded once into its own cache entry
    cache = decoded_cache_dir(project_dir)
    x_train, y_train, classes = load_source_tensors(
        layout.source_data, "train", p, stream=True, cache_dir=cache
    )
    x_test, y_test, _ = load_source_tensors(
        layout.source_data, "test", p, stream=True, cache_dir=cache
    )
    device = resolve_device(p.base.device)
    model = create_model(p.model.arch, len(classes), p.preprocess.channels, seed=p.base.seed)
    with process_group(device) as (rank, size):
        started = time.perf_counter()
        history = fit_ddp(model, (x_train, y_train), p.pretrain, seed=p.base.seed, device=device)
        seconds = time.perf_counter() - started
        digests: list[str | None] = [None] * size
        dist.all_gather_object(digests, weights_digest(model))
    if rank != 0:
        return None
    model.cpu()
    report = {
        "world_size": size,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "rank_weight_digests": digests,
        "train_loss_per_epoch": [e["train_loss"] for e in history.epochs],
        "source_test_accuracy": accuracy(model, x_test, y_test),
        "images_per_rank": -(-len(y_train) // size),
        "seconds": round(seconds, 2),
    }
    card = ModelCard(arch=p.model.arch, classes=classes, preprocess=p.preprocess, strategy="source")
    save_checkpoint(model, card, out_dir)
    write_json(out_dir / "ddp.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchrun ... -m tasks.modeling.distributed",
        description="pretrain the project's source model with DDP (launch with torchrun)",
    )
    parser.add_argument("-C", "--project-dir", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path("models/source-ddp"))
    args = parser.parse_args(argv)
    project = args.project_dir.resolve()
    out = args.out if args.out.is_absolute() else project / args.out
    report = pretrain_distributed(project, out)
    if report is not None:
        print(f"DDP pretraining on {report['world_size']} ranks -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
