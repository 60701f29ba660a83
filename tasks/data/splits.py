"""Seeded, stratified subsamples and split assignment.

Splits are drawn per class from one seeded permutation: test first, then validation, then
the labelled training images, and the rest is the unlabelled pool. Because the order does
not depend on ``labels_per_class``, the test and validation splits stay fixed when it
changes, and a smaller labelled set is a subset of a larger one.

The arithmetic (how many images each class keeps after ``limit``, how many go to each split)
is in functions of counts alone, so the pre-flight check (``tasks/stages/preflight.py``)
decides whether a dataset's splits fit, and what would make them fit, from a folder listing
before any image is read, with the same numbers ``prepare`` will use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tasks.data.manifest import DataError

if TYPE_CHECKING:
    from tasks.core.params import DatasetParams


def _class_order(labels: np.ndarray, label: int, split_seed: int, stream: int) -> np.ndarray:
    members = np.flatnonzero(labels == label)
    return np.random.default_rng([split_seed, int(label), stream]).permutation(members)


def class_share(count: int, total: int, limit: int | None) -> int:
    """Images a class of ``count`` (of ``total``) keeps in a stratified subsample of ``limit``."""
    if limit is None or limit >= total:
        return count
    return min(count, max(1, round(limit * count / total)))


def subsample_counts(counts: Sequence[int], limit: int | None) -> list[int]:
    """Images per class after ``subsample``, from the counts alone."""
    total = sum(counts)
    return [class_share(n, total, limit) for n in counts]


def subsample(labels: np.ndarray, limit: int | None, split_seed: int) -> np.ndarray:
    """Indices of a stratified subsample of about ``limit`` items (all when ``limit`` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    keep = []
    classes = np.unique(labels)
    for label in classes:
        order = _class_order(labels, label, split_seed, stream=1)
        keep.append(order[: class_share(len(order), len(labels), limit)])
    return np.sort(np.concatenate(keep))


def storage_order(index: np.ndarray, splits: np.ndarray, split_seed: int):
    """``index`` and ``splits`` in the order the rows are stored: a seeded permutation.

    Sources and folders come sorted by class (a folder is scanned class by class, mnist5k is
    ordered by label), and a loader streaming the shards shuffles row groups and the rows
    within a few of them (``tasks.data.streaming``), not the whole split at once: stored in
    class order, its batches would each hold a class or two. Stored shuffled, every row
    group is a random sample of the split, so the block shuffle mixes classes as a global
    one does. Seeded by ``data.split_seed``, so a rebuild is byte-identical."""
    order = np.random.default_rng([split_seed, 3]).permutation(len(index))
    return index[order], splits[order]


def split_sizes(count: int, spec: DatasetParams) -> tuple[int, int, int]:
    """(test, val, train) images drawn from a class of ``count``: test by ``test_fraction``
    (at least one), ``val_per_class``, then ``labels_per_class`` or all the rest."""
    n_test = max(1, round(spec.test_fraction * count))
    n_val = spec.val_per_class
    rest = count - n_test - n_val
    n_train = rest if spec.labels_per_class is None else spec.labels_per_class
    return n_test, n_val, n_train


def affords(count: int, spec: DatasetParams) -> bool:
    """A class of ``count`` images has room for its test, val and (at least one) train images."""
    n_test, n_val, n_train = split_sizes(count, spec)
    return n_train >= 1 and n_test + n_val + n_train <= count


def describe_need(count: int, spec: DatasetParams) -> str:
    """What a class of ``count`` images is asked for, e.g. ``4 test + 10 val + 10 train``."""
    n_test, n_val, _ = split_sizes(count, spec)
    train = "at least 1" if spec.labels_per_class is None else str(spec.labels_per_class)
    return f"{n_test} test + {n_val} val + {train} train"


def fitting_splits(count: int, spec: DatasetParams) -> dict[str, float | int] | None:
    """Changes to ``spec``'s split keys that let a class of ``count`` images afford its
    splits (``{}`` when it already does), or None when none can (fewer than 2 images, the
    least a class needs: 1 test + 1 train).

    The test share is kept when it leaves room for one val (if any were asked for) and one
    train image; then val and labelled train shrink in proportion to what was asked, each
    keeping at least one. Otherwise val drops to 0 if it must and ``test_fraction`` shrinks
    so test leaves room. Larger classes afford whatever the smallest one does."""
    if affords(count, spec):
        return {}
    if count < 2:
        return None
    n_test, want_val, _ = split_sizes(count, spec)
    labels = spec.labels_per_class
    rest = count - n_test
    if rest >= 1 + (want_val > 0):
        if labels is None:  # train takes the rest: make room for one
            return {"val_per_class": rest - 1}
        if want_val == 0:
            return {"labels_per_class": rest}
        val = max(1, rest * want_val // (want_val + labels))
        changes = {"val_per_class": val, "labels_per_class": rest - val}
        return {k: v for k, v in changes.items() if getattr(spec, k) != v}
    val = 1 if want_val and count >= 3 else 0
    changes: dict[str, float | int] = {"val_per_class": val} if val != want_val else {}
    most_test = count - 1 - val
    if n_test > most_test:
        changes["test_fraction"] = int(100 * most_test / count) / 100  # 2 decimals, down
        if changes["test_fraction"] < 0.01:
            return None
    if labels is not None and labels != 1:
        changes["labels_per_class"] = 1
    return changes


def assign_splits(
    labels: np.ndarray,
    spec: DatasetParams,
    split_seed: int,
    name: str,
    classes: tuple[str, ...] | None = None,
) -> np.ndarray:
    """One split name per item; see the module docstring for why the order is fixed."""
    splits = np.full(len(labels), "unlabeled", dtype=object)
    for label in np.unique(labels):
        order = _class_order(labels, label, split_seed, stream=0)
        n_test, n_val, n_train = split_sizes(len(order), spec)
        if not affords(len(order), spec):
            shown = classes[label] if classes is not None else label
            raise DataError(
                f"{name}: class {shown} has {len(order)} images, too few for {n_test} test + "
                f"{n_val} val + {spec.labels_per_class} labelled train"
            )
        splits[order[:n_test]] = "test"
        splits[order[n_test : n_test + n_val]] = "val"
        splits[order[n_test + n_val : n_test + n_val + n_train]] = "train"
    return splits
