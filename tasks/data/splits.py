"""Seeded, stratified subsamples and split assignment.

Splits are drawn per class from one seeded permutation: test first, then validation, then
the labelled training images, and the rest is the unlabelled pool. Because the order does
not depend on ``labels_per_class``, the test and validation splits stay fixed when it
changes, and a smaller labelled set is a subset of a larger one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tasks.data.manifest import DataError

if TYPE_CHECKING:
    from tasks.core.params import DatasetParams


def _class_order(labels: np.ndarray, label: int, split_seed: int, stream: int) -> np.ndarray:
    members = np.flatnonzero(labels == label)
    return np.random.default_rng([split_seed, int(label), stream]).permutation(members)


def subsample(labels: np.ndarray, limit: int | None, split_seed: int) -> np.ndarray:
    """Indices of a stratified subsample of about ``limit`` items (all when ``limit`` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    keep = []
    classes = np.unique(labels)
    for label in classes:
        order = _class_order(labels, label, split_seed, stream=1)
        share = max(1, round(limit * len(order) / len(labels)))
        keep.append(order[:share])
    return np.sort(np.concatenate(keep))


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
        n_test = max(1, round(spec.test_fraction * len(order)))
        n_val = spec.val_per_class
        n_train = (
            len(order) - n_test - n_val if spec.labels_per_class is None else spec.labels_per_class
        )
        if n_train < 1 or n_test + n_val + n_train > len(order):
            shown = classes[label] if classes is not None else label
            raise DataError(
                f"{name}: class {shown} has {len(order)} images, too few for {n_test} test + "
                f"{n_val} val + {spec.labels_per_class} labelled train"
            )
        splits[order[:n_test]] = "test"
        splits[order[n_test : n_test + n_val]] = "val"
        splits[order[n_test + n_val : n_test + n_val + n_train]] = "train"
    return splits
