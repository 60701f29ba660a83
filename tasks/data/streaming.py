"""Training images streamed from a prepared split's shards, with flat memory, and decoded once.

``ShardImages`` is a map-style dataset over one split (``len``; ``ds[idx]`` is the
preprocessed NCHW batch, the same values as ``load_tensors(...)[0][idx]``) that reads the
shards' row groups (``tasks.data.shards``), the streaming unit, keeping only a few encoded
row groups in a small LRU: memory does not grow with the dataset.

Order. ``epoch_order(gen)`` permutes the row groups, then the rows within a window of
``WINDOW_GROUPS`` row groups (a block shuffle): seeded, every row exactly once per epoch,
and each row group read about once per epoch. The training loop takes a dataset's own
``epoch_order`` when it has one (``tasks.modeling.batches.epoch_batches``), so streamed
training costs no more reads than in-memory training costs memory.

Ranks and workers. ``ds.part(rank, size, seed)`` is the part of a DDP rank (and, applied
again, of a DataLoader worker): the row groups in a seeded order cut into contiguous runs
of equal row count, so parts are disjoint, each reads its own run of row groups (sharing at
most a boundary group with a neighbour, so it works with fewer row groups than ranks), and
the shorter parts are padded with one of their own rows so every rank takes the same number
of steps, as ``DistributedSampler`` does. ``ShardBatches`` is the torch ``IterableDataset``
view for users who wrap the data in a ``DataLoader`` with workers.

The decoded cache. Decoding and preprocessing dominate an epoch from shards, so when a
dataset's decoded, preprocessed tensor fits ``cache_mb``, the first epoch fills a float32
``.npy`` file row by row as batches are decoded (``DecodedCache``) and later epochs read
rows from it without decoding. It is keyed on the preprocessing params and the exact data
(each row's pixel hash, in the dataset's row order), lives under the project's
``.tlp/cache/decoded`` (outside what DVC versions and git tracks), is published by rename
only once every row is filled (a half-written file is never taken as complete), and the
oldest entries are evicted beyond the budget. Rows are read and written with positioned
I/O rather than a memory map, so the cached pages count as page cache, not as the
process's resident memory. The order does not depend on the cache, so a seed gives the
same model whether the cache is on, off, cold or warm.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.data.shards import RowGroup, read_row_group, row_groups

log = logging.getLogger(__name__)
CACHE_SUBDIR = Path("cache") / "decoded"  # under the project's .tlp work folder
CACHE_VERSION = 1  # bump when preprocessing changes what the same params produce
WINDOW_GROUPS = 4  # rows are shuffled within this many row groups
LRU_GROUPS = 2 * WINDOW_GROUPS  # a batch may straddle two windows


@dataclass(frozen=True)
class Piece:
    """Rows ``start`` to ``stop`` (exclusive) of row group ``group`` (an index into the
    split's ``row_groups``): what a dataset, a rank's part or a worker's part is made of."""

    group: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def cut(pieces: list[Piece], parts: int) -> list[list[Piece]]:
    """``pieces`` cut into ``parts`` contiguous runs whose row counts differ by at most one."""
    total = sum(len(p) for p in pieces)
    bounds = [total * k // parts for k in range(parts + 1)]
    out: list[list[Piece]] = [[] for _ in range(parts)]
    first = 0
    for piece in pieces:
        for k in range(parts):
            lo, hi = max(first, bounds[k]), min(first + len(piece), bounds[k + 1])
            if lo < hi:
                start = piece.start + lo - first
                out[k].append(Piece(piece.group, start, start + hi - lo))
        first += len(piece)
    return out


def partition(pieces: list[Piece], rank: int, size: int, seed: int) -> list[Piece]:
    """Part ``rank`` of ``size``: disjoint from the others, padded to the longest's length."""
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed)).tolist()
    parts = cut([pieces[i] for i in order], size)
    longest = max(sum(len(p) for p in part) for part in parts)
    mine = parts[rank]
    if mine and sum(len(p) for p in mine) < longest:  # one short: repeat its first row
        mine = [*mine, Piece(mine[0].group, mine[0].start, mine[0].start + 1)]
    return mine


class DecodedCache:
    """Decoded, preprocessed rows of one dataset in a float32 ``.npy`` file, filled as they
    are decoded and published (renamed to ``<key>.npy``) once every row is in."""

    def __init__(self, root: Path, key: str, shape: tuple[int, ...], budget_bytes: int):
        self.root, self.shape = root, shape
        self.row_bytes = int(np.prod(shape[1:])) * 4
        self.final = root / f"{key}.npy"
        root.mkdir(parents=True, exist_ok=True)
        if self.final.is_file():
            self.path, self.complete = self.final, True
            os.utime(self.final)  # recently used: evicted last
            self.filled = np.ones(shape[0], dtype=bool)
        else:
            _evict(root, budget_bytes - self.nbytes, keep=())
            self.path, self.complete = root / f"{key}.{os.getpid()}.partial", False
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
            self.filled = np.zeros(shape[0], dtype=bool)
        self.budget = budget_bytes
        self.fd = os.open(self.path, os.O_RDWR if not self.complete else os.O_RDONLY)
        with open(self.path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            self.offset = f.tell()

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` in that order, one positioned read per run of consecutive rows."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        for first, count in _runs(rows):
            at = self.offset + int(rows[first]) * self.row_bytes
            data = os.pread(self.fd, count * self.row_bytes, at)
            out[first : first + count] = np.frombuffer(data, np.float32).reshape(
                count, *self.shape[1:]
            )
        return torch.from_numpy(out)

    def write(self, rows: np.ndarray, values: torch.Tensor) -> None:
        """Store rows ``rows`` (sorted, unique); publish the file once every row is in."""
        data = values.contiguous().numpy().astype(np.float32, copy=False)
        for first, count in _runs(rows):
            at = self.offset + int(rows[first]) * self.row_bytes
            os.pwrite(self.fd, data[first : first + count].tobytes(), at)
        self.filled[rows] = True
        if self.filled.all():
            self._publish()

    def _publish(self) -> None:
        """Every row is in: rename the file into place, then keep the cache within budget."""
        os.fsync(self.fd)
        self.complete = True
        try:
            os.replace(self.path, self.final)
        except FileNotFoundError:  # another process evicted our partial file: keep our fd
            return
        self.path = self.final
        _evict(self.root, self.budget, keep=(self.final,))

    def close(self) -> None:
        os.close(self.fd)
        if not self.complete:
            self.path.unlink(missing_ok=True)


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(position, length) of each run of consecutive increasing values in ``rows``."""
    starts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist()]
    return [(a, b - a) for a, b in zip(starts, [*starts[1:], len(rows)], strict=True)]


def _evict(root: Path, budget: int, keep: tuple[Path, ...]) -> None:
    """Delete the least recently used entries until the folder holds at most ``budget``
    (another process may be evicting or publishing at the same time: a file gone is fine)."""
    entries = []
    for path in root.iterdir():
        with contextlib.suppress(FileNotFoundError):
            entries.append((path.stat(), path))
    used = sum(stat.st_size for stat, _ in entries)
    for stat, path in sorted(entries, key=lambda e: e[0].st_mtime):
        if used <= budget:
            break
        if path not in keep:
            used -= stat.st_size
            path.unlink(missing_ok=True)


def cache_key(cfg, degrade_to: int | None, fit_frame: bool, pixel_hashes: list[str]) -> str:
    """What makes two decoded tensors equal: the preprocessing and each row's pixels."""
    what = {
        "version": CACHE_VERSION,
        "preprocess": cfg.model_dump(mode="json"),
        "degrade_to": degrade_to,
        "fit_frame": fit_frame,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    digest.update("\n".join(pixel_hashes).encode())
    return digest.hexdigest()[:24]


class ShardImages:
    """One split's images from its shards, decoded and preprocessed when indexed (see the
    module docstring). ``labels``: the matching labels tensor; ``decoded``: images decoded
    so far and ``group_reads``: row groups read so far (what the tests and benchmarks count).
    """

    def __init__(
        self,
        dataset_dir: Path,
        split: str,
        cfg,
        degrade_to: int | None = None,
        fit_frame: bool = False,
        *,
        cache_dir: Path | None = None,
        cache_mb: int = 0,
    ):
        from tasks.data.manifest import DataError, read_manifest

        self.cfg, self.degrade_to, self.fit_frame = cfg, degrade_to, fit_frame
        self.groups: list[RowGroup] = row_groups(dataset_dir, split)
        rows = read_manifest(dataset_dir)
        rows = rows[rows["split"] == split]
        if len(rows) != sum(g.rows for g in self.groups):
            raise DataError(
                f"{dataset_dir}: the {split} shards hold {sum(g.rows for g in self.groups)} "
                f"images, the manifest {len(rows)} (prepare the data again)"
            )
        self._labels = rows["label"].to_numpy(np.int64)
        self._hashes = rows["sha256"].to_numpy()
        self.cache_dir, self.cache_mb = cache_dir, cache_mb
        self._use([Piece(i, 0, g.rows) for i, g in enumerate(self.groups)])

    def _use(self, pieces: list[Piece]) -> None:
        """Make this dataset the rows of ``pieces``, in that order."""
        self.pieces = pieces
        self.group_of = np.concatenate(
            [np.full(len(p), p.group, dtype=np.int64) for p in pieces] or [np.empty(0, np.int64)]
        )
        self.row_in_group = np.concatenate(
            [np.arange(p.start, p.stop) for p in pieces] or [np.empty(0, np.int64)]
        )
        firsts = np.array([g.first_row for g in self.groups], dtype=np.int64)
        self.split_rows = firsts[self.group_of] + self.row_in_group  # row within the split
        self.labels = torch.from_numpy(self._labels[self.split_rows].copy())
        self._lru: OrderedDict[int, list[bytes]] = OrderedDict()
        self.decoded = self.group_reads = 0
        self._cache: DecodedCache | None = None
        self._cache_opened = False

    @property
    def cache(self) -> DecodedCache | None:
        """Opened on first use, so a dataset only ever cut into parts leaves no file."""
        if not self._cache_opened:
            self._cache_opened = True
            try:
                self._cache = self._open_cache()
            except OSError as exc:
                self._drop_cache(exc)
        return self._cache

    def _drop_cache(self, exc: OSError) -> None:
        """The cache only saves time: a full disk or an unwritable folder turns it off for
        this dataset (one warning), and training goes on decoding, with the same results."""
        log.warning("decoded cache off for this run (%s); images are decoded every epoch", exc)
        if self._cache is not None:
            with contextlib.suppress(OSError):
                self._cache.close()
        self._cache = None

    def _open_cache(self) -> DecodedCache | None:
        size = self.cfg.image_size
        shape = (len(self), self.cfg.channels, size, size)
        budget = self.cache_mb * 1024**2
        if self.cache_dir is None or not len(self) or int(np.prod(shape)) * 4 > budget:
            return None
        hashes = self._hashes[self.split_rows].tolist()
        key = cache_key(self.cfg, self.degrade_to, self.fit_frame, hashes)
        return DecodedCache(self.cache_dir, key, shape, budget)

    def __getstate__(self) -> dict:
        """Pickled for a DataLoader worker: without the LRU and the open cache file, which
        the worker opens for itself."""
        return {**self.__dict__, "_lru": OrderedDict(), "_cache": None, "_cache_opened": False}

    def part(self, rank: int, size: int, seed: int) -> ShardImages:
        """This dataset's part for DDP rank ``rank`` of ``size`` (``partition``: disjoint,
        padded to equal lengths)."""
        return self._view(partition(self.pieces, rank, size, seed))

    def worker(self, k: int, workers: int) -> ShardImages:
        """DataLoader worker ``k``'s share of this dataset: a contiguous run of its row
        groups (``cut``; no padding, a DataLoader takes what each worker yields)."""
        return self._view(cut(self.pieces, workers)[k])

    def _view(self, pieces: list[Piece]) -> ShardImages:
        view = copy.copy(self)
        view._use(pieces)
        return view

    def __len__(self) -> int:
        return len(self.split_rows)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self._batch(np.arange(len(self))[[idx]])[0]
        if isinstance(idx, slice):
            return self._batch(np.arange(len(self))[idx])
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        return self._batch(np.arange(len(self))[np.asarray(idx, dtype=np.int64).reshape(-1)])

    def epoch_order(self, gen: torch.Generator) -> torch.Tensor:
        """One epoch's row order: the pieces permuted, then rows shuffled within windows of
        ``WINDOW_GROUPS`` pieces (seeded by ``gen``; every row exactly once)."""
        starts = np.cumsum([0] + [len(p) for p in self.pieces])
        chosen = torch.randperm(len(self.pieces), generator=gen).tolist()
        windows = []
        for w in range(0, len(chosen), WINDOW_GROUPS):
            rows = torch.cat(
                [torch.arange(starts[i], starts[i + 1]) for i in chosen[w : w + WINDOW_GROUPS]]
            )
            windows.append(rows[torch.randperm(len(rows), generator=gen)])
        return torch.cat(windows) if windows else torch.empty(0, dtype=torch.int64)

    def _batch(self, rows: np.ndarray) -> torch.Tensor:
        cache = self.cache
        if cache is not None and cache.complete:  # later epochs: straight from the file
            return cache.read(rows)
        wanted, where = np.unique(rows, return_inverse=True)
        size = self.cfg.image_size
        out = torch.empty(len(wanted), self.cfg.channels, size, size)
        cached = cache.filled[wanted] if cache else np.zeros(len(wanted), bool)
        if cached.any():
            out[torch.from_numpy(cached)] = cache.read(wanted[cached])
        todo = wanted[~cached]
        if len(todo):
            fresh = self._decode(todo)
            out[torch.from_numpy(~cached)] = fresh
            if cache is not None:
                try:
                    cache.write(todo, fresh)
                except OSError as exc:
                    self._drop_cache(exc)
        return out[torch.from_numpy(where.reshape(-1))]

    def _decode(self, rows: np.ndarray) -> torch.Tensor:
        from tasks.data.preprocessing import preprocess, read_image

        channels = self.cfg.channels
        images = [
            read_image(io.BytesIO(self._encoded(int(g))[int(r)]), channels)
            for g, r in zip(self.group_of[rows], self.row_in_group[rows], strict=True)
        ]
        self.decoded += len(images)
        return preprocess(images, self.cfg, degrade_to=self.degrade_to, fit_frame=self.fit_frame)

    def _encoded(self, group: int) -> list[bytes]:
        """Row group ``group``'s encoded images, from the LRU or read from its shard."""
        if group in self._lru:
            self._lru.move_to_end(group)
            return self._lru[group]
        images = read_row_group(self.groups[group], columns=("image",))["image"]
        self.group_reads += 1
        self._lru[group] = images
        if len(self._lru) > LRU_GROUPS:
            self._lru.popitem(last=False)
        return images


class ShardBatches(torch.utils.data.IterableDataset):
    """``(inputs, labels)`` batches of a ``ShardImages`` in its seeded epoch order, for a
    torch ``DataLoader`` (``batch_size=None``): each worker takes its own part of the row
    groups (``get_worker_info``), so workers read disjoint shards. ``set_epoch`` reshuffles."""

    def __init__(self, images: ShardImages, batch_size: int, seed: int):
        self.images, self.batch_size, self.seed, self.epoch = images, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.images
        if info is not None and info.num_workers > 1:
            mine = mine.worker(info.id, info.num_workers)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = mine.epoch_order(gen)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield mine[idx], mine.labels[idx]
