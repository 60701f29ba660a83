"""Pretraining streams its source from the shards: the same tensors, so the same model; a
seeded block-shuffled order; disjoint rank and worker parts; bounded memory; a decoded cache
that spares later epochs the decoding and is never taken when half written."""

import pytest
import torch

from tasks.core.params import default_section
from tasks.data import shards, streaming
from tasks.data.datasets import prepare_dataset
from tasks.data.loading import load_tensors, stream_tensors
from tasks.data.manifest import MANIFEST, read_manifest
from tasks.modeling.batches import accuracy, epoch_batches
from tasks.modeling.models import create_model
from tasks.modeling.training import fit

PRE = default_section("preprocess", image_size=16, channels=1)
GROUP_ROWS = 16  # small row groups, so 120 images make several streaming units


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A prepared source re-sharded into 16-row row groups (read back through the shard API,
    so the fixture holds whatever prepare writes)."""
    out = tmp_path_factory.mktemp("stream") / "source"
    spec = default_section(
        "data.source", builtin="mnist5k", limit=120, test_fraction=0.2, val_per_class=0
    )
    prepare_dataset(spec, 0, out)
    manifest = read_manifest(out)
    images = shards.read_image_bytes(out, manifest)
    for path in (out / shards.SHARD_DIR).iterdir():
        path.unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "ROW_GROUP_ROWS", GROUP_ROWS)
        plain = manifest.drop(columns=["shard", "row"])
        shards.write_shards(out, plain, lambda i: images[i]).to_parquet(out / MANIFEST)
    return out


@pytest.fixture(scope="module")
def in_memory(source):
    return load_tensors(source, "train", PRE, 8, True)


def _streamed(source, cache_dir=None, cache_mb=0):
    return stream_tensors(source, "train", PRE, 8, True, cache_dir=cache_dir, cache_mb=cache_mb)


@pytest.mark.parametrize(("degrade", "fit_frame"), [(None, False), (8, False), (8, True)])
def test_streamed_rows_equal_the_in_memory_rows(source, degrade, fit_frame):
    x, y, classes = load_tensors(source, "train", PRE, degrade, fit_frame)
    files, labels, streamed_classes = stream_tensors(source, "train", PRE, degrade, fit_frame)
    assert len(files) == len(x) and torch.equal(labels, y) and streamed_classes == classes
    assert len(files.groups) > 4  # several row groups: the order and the LRU are exercised
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:17]
    assert torch.equal(files[idx], x[idx])
    assert torch.equal(files[5:40], x[5:40])
    assert torch.equal(files[3], x[3])


def test_a_dataset_without_its_shards_is_named(source, tmp_path):
    import shutil

    from tasks.data.manifest import DataError

    shutil.copy(source / MANIFEST, tmp_path / MANIFEST)
    with pytest.raises(DataError, match=r"train shards hold 0 images, the manifest \d+"):
        streaming.ShardImages(tmp_path, "train", PRE)


def test_epoch_order_is_seeded_and_covers_every_row_once(source):
    files, _, _ = _streamed(source)

    def order(seed):
        return files.epoch_order(torch.Generator().manual_seed(seed))

    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
    assert sorted(order(1).tolist()) == list(range(len(files)))
    # rows are shuffled within a window of row groups, not only whole groups moved
    first = order(1)[: streaming.WINDOW_GROUPS * GROUP_ROWS]
    assert len(set(files.group_of[first.numpy()].tolist())) > 1
    assert not torch.equal(first.sort().values, first)


def test_an_epoch_reads_each_row_group_once_with_a_bounded_lru(source):
    files, _, _ = _streamed(source)
    batches = epoch_batches(len(files), 4, 32, torch.Generator().manual_seed(0), files.epoch_order)
    for idx in batches:
        files[idx]
        assert len(files._lru) <= streaming.LRU_GROUPS
    assert files.group_reads == len(files.groups)
    assert files.decoded == len(files)


def test_plain_tensors_keep_the_global_permutation():
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    order = torch.randperm(50, generator=gen_b)
    assert torch.equal(torch.cat(epoch_batches(50, 5, 10, gen_a)), order)


@pytest.mark.parametrize(("ranks", "workers"), [(2, 1), (3, 2), (16, 1)])
def test_rank_and_worker_parts_are_disjoint_equal_and_cover_every_row(
    source, in_memory, ranks, workers
):
    files, _, _ = _streamed(source)
    x, y, _ = in_memory
    parts = [files.part(r, ranks, seed=0) for r in range(ranks)]  # 16 ranks > row groups
    assert len({len(p) for p in parts}) == 1  # padded: every rank takes the same steps
    rows = [set(p.split_rows.tolist()) for p in parts]
    assert sum(len(r) for r in rows) == len(files) and set().union(*rows) == set(range(len(y)))
    for part in parts:
        assert torch.equal(part.labels, y[part.split_rows])
        shares = [part.worker(k, workers) for k in range(workers)]  # split the rank's part
        assert sum(len(w) for w in shares) == len(part)
        assert set().union(*(w.split_rows.tolist() for w in shares)) == set(part.split_rows)
    some = parts[0]
    assert torch.equal(some[torch.arange(len(some))], x[some.split_rows])


def test_the_iterable_view_yields_every_row_once(source, in_memory):
    files, _, _ = _streamed(source)
    x, y, _ = in_memory
    loader = torch.utils.data.DataLoader(streaming.ShardBatches(files, 32, seed=0), batch_size=None)
    got_x, got_y = zip(*loader, strict=True)
    assert sorted(torch.cat(got_y).tolist()) == sorted(y.tolist())
    assert torch.cat(got_x).shape == x.shape


def test_later_epochs_read_the_cache_without_decoding(source, in_memory, tmp_path):
    x, _, _ = in_memory
    files, _, _ = _streamed(source, tmp_path, cache_mb=16)
    order = files.epoch_order(torch.Generator().manual_seed(0))
    for i in range(0, len(order), 32):  # the first epoch decodes and fills the cache
        files[order[i : i + 32]]
    assert files.decoded == len(files) and files.cache.complete
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]
    again, _, _ = _streamed(source, tmp_path, cache_mb=16)  # a later run, or epoch
    assert torch.equal(again[order[:40]], x[order[:40]]) and again.decoded == 0
    assert files[3].equal(x[3]) and files.decoded == len(files)


def test_the_cache_key_follows_the_preprocessing_and_the_data(source):
    files, _, _ = _streamed(source)
    hashes = files._hashes.tolist()
    key = streaming.cache_key(PRE, 8, True, hashes)
    assert key == streaming.cache_key(PRE, 8, True, list(hashes))
    assert key != streaming.cache_key(PRE.model_copy(update={"image_size": 20}), 8, True, hashes)
    assert key != streaming.cache_key(PRE, None, True, hashes)
    assert key != streaming.cache_key(PRE, 8, False, hashes)
    assert key != streaming.cache_key(PRE, 8, True, [*hashes[:-1], "0" * 64])


def test_a_half_written_cache_is_not_used_and_over_budget_is_off(source, in_memory, tmp_path):
    x, _, _ = in_memory
    files, _, _ = _streamed(source, tmp_path, cache_mb=16)
    files[:10]  # a run that stopped after a few batches
    assert not files.cache.complete and not list(tmp_path.glob("*.npy"))
    later, _, _ = _streamed(source, tmp_path, cache_mb=16)
    assert torch.equal(later[:20], x[:20]) and later.decoded == 20  # decodes, not zeros
    tiny, _, _ = _streamed(source, tmp_path / "tiny", cache_mb=0)
    assert tiny.cache is None


def test_a_full_disk_turns_the_cache_off_not_the_training(source, in_memory, tmp_path):
    import errno

    x, _, _ = in_memory
    files, _, _ = _streamed(source, tmp_path, cache_mb=16)
    with pytest.MonkeyPatch.context() as patch:
        full = OSError(errno.ENOSPC, "No space left on device")
        patch.setattr(streaming.os, "pwrite", lambda *a: (_ for _ in ()).throw(full))
        assert torch.equal(files[:20], x[:20])
    assert files.cache is None and not list(tmp_path.iterdir())
    assert torch.equal(files[10:30], x[10:30])


def test_the_oldest_cache_entries_are_evicted_beyond_the_budget(tmp_path):
    import os

    for age, name in enumerate(["old.npy", "newer.npy"]):
        (tmp_path / name).write_bytes(b"\0" * 1024**2)
        os.utime(tmp_path / name, (age, age))
    streaming._evict(tmp_path, 1024**2, keep=())
    assert [p.name for p in tmp_path.iterdir()] == ["newer.npy"]


@pytest.mark.slow  # seconds on an idle machine; much more on a loaded one
def test_streamed_training_gives_the_same_model_cached_or_not(source, in_memory, tmp_path):
    """The same order gives the same model from shards (cache off, cache on) as in memory."""
    cfg = default_section(
        "pretrain", epochs=2, batch_size=16, lr=3e-3, augment_shift=1, warmup_epochs=0
    )
    x, y, _ = in_memory
    files, labels, _ = _streamed(source)
    files = files.part(0, 4, seed=0)  # a quarter of the rows: two steps an epoch
    labels = files.labels
    cached, _, _ = _streamed(source, tmp_path, cache_mb=16)
    cached = cached.part(0, 4, seed=0)

    class InMemory:  # the whole split in memory, in the streamed order
        def __init__(self, rows):
            self.x, self.epoch_order = x[rows], files.epoch_order

        def __len__(self):
            return len(self.x)

        def __getitem__(self, idx):
            return self.x[idx]

    models = [create_model("resnet10t", 10, 1, 0) for _ in range(3)]
    runs = [
        fit(m, (data, labels), cfg, seed=1, val=(data, labels))
        for m, data in zip(models, (InMemory(files.split_rows), files, cached), strict=True)
    ]
    assert runs[0].epochs == runs[1].epochs == runs[2].epochs
    assert cached.cache.complete and cached.decoded == len(cached)  # epoch 2: no decoding
    for name, p in models[0].state_dict().items():
        assert all(torch.equal(p, m.state_dict()[name]) for m in models[1:]), name
    assert accuracy(models[1], files, labels) == accuracy(models[0], x[files.split_rows], labels)
