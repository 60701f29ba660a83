"""Resumable training: every epoch ends with a checkpoint in ``state_dir`` (safetensors
weights, a ``torch.load(weights_only=True)``-safe file for optimiser and RNG state, and JSON
history), so a rerun after a crash continues from the last complete epoch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

LATEST = "latest.json"


def save_state(state_dir: Path, epoch: int, modules, optimizer, gen, history, best) -> None:
    """Write epoch ``epoch``'s checkpoint to its own folder, then point ``latest.json`` at it."""
    from safetensors.torch import save_file

    folder = state_dir / f"epoch-{epoch:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in modules.state_dict().items()}
    save_file(tensors, str(folder / "weights.safetensors"))
    if best is not None:
        save_file(best, str(folder / "best.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "gen": gen.get_state(),
            "torch": torch.get_rng_state(),
        },
        folder / "state.pt",
    )
    meta = {
        "epoch": epoch,
        "folder": folder.name,
        "epochs": history.epochs,
        "best_epoch": history.best_epoch,
        "has_best": best is not None,
    }
    tmp = state_dir / (LATEST + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, state_dir / LATEST)  # atomic: a kill leaves the previous epoch in place
    for old in state_dir.glob("epoch-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def load_state(state_dir: Path, modules, optimizer, gen, history) -> tuple[int, dict | None]:
    """Restore the last complete epoch; returns (epochs done, best weights or None)."""
    from safetensors.torch import load_file

    latest = state_dir / LATEST
    if not latest.is_file():
        return 0, None
    meta = json.loads(latest.read_text())
    folder = state_dir / meta["folder"]
    modules.load_state_dict(load_file(str(folder / "weights.safetensors")))
    state = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    history.epochs = meta["epochs"]
    history.best_epoch = meta["best_epoch"]
    best = load_file(str(folder / "best.safetensors")) if meta["has_best"] else None
    return meta["epoch"] + 1, best
