"""Each candidate stage ``transfer@NAME`` lists only the ``transfer.*`` keys its strategy
reads (``STRATEGY_KEYS``): every strategy, run on tiny tensors with ``params.transfer``
recording the keys read, reads none outside its list, or a change to that key would leave
the candidate "up to date" in DVC."""

from __future__ import annotations

import pytest

from tasks.core.params import ALL_STRATEGIES, resolve_params
from tasks.core.params.scaling import STRATEGY_KEYS, candidate_params

CLASSES = ("a", "b", "c")


class Recording:
    """``params.transfer`` that notes each key read."""

    def __init__(self, transfer) -> None:
        self._transfer = transfer
        self.read: set[str] = set()

    def __getattr__(self, key: str):
        self.read.add(key)
        return getattr(self._transfer, key)


class WithTransfer:
    """``Params`` whose ``transfer`` is the recording one; the rest as it is."""

    def __init__(self, params, transfer: Recording) -> None:
        self._params, self.transfer = params, transfer

    def __getattr__(self, key: str):
        return getattr(self._params, key)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, project_root):
    """A project holding a tiny source checkpoint (resnet10t, 8 px), params for one epoch of
    two steps, and tensors for the target and source splits."""
    import torch

    from tasks.core.context import open_context
    from tasks.modeling.models import ModelCard, create_model, save_checkpoint

    project = tmp_path_factory.mktemp("keys")
    params = resolve_params(
        project_root / "params.yaml",
        overrides=[
            f"storage.tracking_uri=sqlite:///{project}/m.db",
            "base.threads=1",
            "preprocess.image_size=8",
            "transfer.epochs=1",
            "transfer.batch_size=4",
            "transfer.warmup_epochs=0",
            "transfer.min_steps=0",
            f"transfer.strategies=[{','.join(ALL_STRATEGIES)}]",
            "transfer.instance_weighting=domain_classifier",
            "transfer.resume=false",
        ],
    )
    card = ModelCard(arch="resnet10t", classes=CLASSES, preprocess=params.preprocess)
    save_checkpoint(create_model("resnet10t", 3, 1, seed=0), card, project / "models" / "source")
    gen = torch.Generator().manual_seed(0)

    def split(n: int):
        return torch.randn(n, 1, 8, 8, generator=gen), torch.arange(n) % len(CLASSES)

    return open_context(project, params), split(6), split(3), split(9)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_a_strategy_reads_only_its_keys(tiny, name):
    from tasks.core import tracking
    from tasks.core.params import SOURCE_USING_STRATEGIES
    from tasks.modeling.strategies import STRATEGIES, Job, instance_weights

    ctx, train, val, source = tiny
    recording = Recording(ctx.params.transfer)
    job = Job(ctx, name, train, val, train[0], CLASSES)
    job.ctx = type(ctx)(**{**vars(ctx), "params": WithTransfer(ctx.params, recording)})
    job.__dict__["source"] = (*source, CLASSES)  # the cached source split, not read from disk
    with tracking.child_run(f"transfer/{name}", ctx.experiment_id, None):
        if name in SOURCE_USING_STRATEGIES:
            job.instance_weights = instance_weights(job)  # as run_candidate does
        STRATEGIES[name](job)
    # source_only trains nothing: its model is the source's (models/source, a dep)
    assert recording.read or name == "source_only", "no read recorded: the proxy was bypassed"
    assert recording.read <= set(STRATEGY_KEYS[name]), recording.read - set(STRATEGY_KEYS[name])


def test_candidate_params_hold_only_what_the_strategy_reads(tiny):
    ctx = tiny[0]
    assert set(candidate_params(ctx.params, "linear_probe")["transfer"]) == {
        "source",
        "keep_head",
        "probe_c",
    }
    assert candidate_params(ctx.params, "full")["search"] == {"trials": 0}
