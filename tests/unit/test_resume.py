"""Resumable training: a process killed (SIGKILL) mid-training resumes from its last epoch
checkpoint on the next run and ends with exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import torch
from tasks.data.builtins import load_builtin
from tasks.modeling.models import create_model
from tasks.core.params import default_section
from tasks.data.preprocessing import preprocess
from tasks.modeling.batches import predict_logits
from tasks.modeling.training import fit

state_dir, kill_at, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
raw = load_builtin("uci-digits")
inputs = preprocess(raw.images[:160], default_section("preprocess", image_size=16))
labels = torch.as_tensor(raw.labels[:160])
cfg = default_section(
    "pretrain", epochs=5, batch_size=32, lr=3e-3, augment_shift=1, warmup_epochs=1
)

def on_epoch(epoch, metrics):
    if epoch == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real crash

model = create_model("resnet10t", 10, 1, seed=0)
history = fit(model, (inputs[:128], labels[:128]), cfg, seed=1, val=(inputs[128:], labels[128:]),
              state_dir=Path(state_dir) if state_dir != "-" else None, on_epoch=on_epoch,
              patience=3)
logits = predict_logits(model, inputs[128:])
out.write_text(json.dumps({"epochs": history.epochs, "best": history.best_epoch,
                           "logits": logits.tolist()}))
"""


def _train(project_root, tmp_path, state_dir: str, kill_at: int, name: str):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, state_dir, str(kill_at), str(out)],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    return proc, out


def test_killed_training_resumes_to_the_same_result(project_root, tmp_path):
    state = tmp_path / "state"
    proc, _ = _train(project_root, tmp_path, "-", -1, "plain")
    assert proc.returncode == 0, proc.stderr
    plain = json.loads((tmp_path / "plain.json").read_text())

    proc, out = _train(project_root, tmp_path, str(state), 2, "killed")
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and (state / "latest.json").is_file()
    assert json.loads((state / "latest.json").read_text())["epoch"] == 2

    proc, out = _train(project_root, tmp_path, str(state), -1, "resumed")
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(out.read_text())
    assert resumed["epochs"] == plain["epochs"]  # every metric of every epoch, exactly
    assert resumed["best"] == plain["best"]
    assert resumed["logits"] == plain["logits"]
    assert not state.exists()  # removed once training finished
