"""The kNN monitor of self-supervised pretraining: how well the backbone's features, as they
are now, separate the labelled target classes, without training anything on them.

A weighted k-nearest-neighbour vote (Wu et al. 2018, as in solo-learn and Lightly): the
queries' L2-normalised features are compared by cosine similarity with a bank of labelled
features, and the k most similar vote for their class with weight exp(similarity / T). The
bank and queries are the labelled target train and val splits: tens to hundreds of images,
so a call costs two inference passes, cheap enough for every epoch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.modeling.batches import map_batches, pooled_features


def knn_predict(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, temperature: float
) -> torch.Tensor:
    """Each query's class by a similarity-weighted vote of its ``k`` nearest bank rows
    (rows L2-normalised here; ``k`` is capped at the bank's size)."""
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    sims, nearest = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    classes = int(bank_labels.max()) + 1
    votes = torch.zeros(len(queries), classes, dtype=sims.dtype)
    votes.scatter_add_(1, bank_labels[nearest], (sims / temperature).exp())
    return votes.argmax(1)


class KnnMonitor:
    """``monitor(model)``: the kNN accuracy of ``model``'s pooled pre-logit features on the
    queries, with the bank as neighbours; NaN without queries or bank."""

    def __init__(
        self,
        bank_inputs: torch.Tensor,
        bank_labels: torch.Tensor,
        query_inputs: torch.Tensor,
        query_labels: torch.Tensor,
        k: int,
        temperature: float = 0.1,
    ) -> None:
        if k < 1:
            raise ValueError("the kNN monitor needs k >= 1")
        self.bank_inputs, self.bank_labels = bank_inputs, torch.as_tensor(bank_labels)
        self.query_inputs, self.query_labels = query_inputs, torch.as_tensor(query_labels)
        self.k, self.temperature = k, temperature

    def __call__(self, model: torch.nn.Module) -> float:
        if len(self.query_labels) == 0 or len(self.bank_labels) == 0:
            return math.nan
        was_training = model.training
        try:
            bank = map_batches(model, pooled_features, self.bank_inputs)
            queries = map_batches(model, pooled_features, self.query_inputs)
        finally:
            model.train(was_training)
        predicted = knn_predict(bank, self.bank_labels, queries, self.k, self.temperature)
        return (predicted == self.query_labels).float().mean().item()
