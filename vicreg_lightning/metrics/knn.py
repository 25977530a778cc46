"""Weighted k-nearest-neighbour classification of frozen features, (the callback that runs it
during pretraining: :class:`vicreg_lightning.callbacks.knn_monitor.KNNMonitor`).

The classifier is the one of Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (CVPR 2018), as DINO (Caron et al., ICCV 2021,
``eval_knn.py``) implements it: cosine similarity to a bank of labelled training features, the
``k`` most similar vote for their class with weight ``exp(similarity / T)``, T = 0.07. VICReg
reports 20-NN 64.5% and 200-NN 62.8% top-1 on ImageNet with a ResNet-50 (Bardes, Ponce, LeCun,
ICLR 2022, Table 10). It needs no training, so it is cheap enough to watch during pretraining
(:class:`~vicreg_lightning.callbacks.knn_monitor.KNNMonitor`).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor



@torch.no_grad()
def knn_class_scores(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    query_chunk_size: int = 256,
    bank_chunk_size: int = 16384,
) -> Tensor:
    """Class scores ``(Q, num_classes)`` of each query: ``Σ exp(cos(q, b) / T)`` over its ``k``
    most cosine-similar bank rows ``b`` of each class (Wu et al., CVPR 2018). The predicted class
    is the argmax; top-5 takes the five largest.

    Features need not be normalised (cosine similarity is taken here). ``k`` larger than the bank
    is clamped to its size. Memory beyond the inputs stays at one ``query_chunk_size ×
    bank_chunk_size`` block of similarities: each query chunk walks the bank chunk by chunk and
    keeps a running top-k, so a bank of millions of rows is never compared all at once.
    Computed on ``bank.device``; queries are moved there chunk by chunk.
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be (N, D) with equal D")
    if len(bank) != len(bank_labels) or len(bank) == 0:
        raise ValueError(f"bank has {len(bank)} rows and {len(bank_labels)} labels; expected as many, at least 1")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    k = min(k, len(bank))
    bank_labels = bank_labels.to(bank.device)
    scores = []
    for query in queries.split(query_chunk_size):
        query = F.normalize(query.to(bank.device, torch.float32), dim=1)
        top_sim = torch.empty(len(query), 0, device=bank.device)
        top_label = torch.empty(len(query), 0, dtype=torch.long, device=bank.device)
        for start in range(0, len(bank), bank_chunk_size):
            chunk = F.normalize(bank[start : start + bank_chunk_size].float(), dim=1)
            sim, index = (query @ chunk.T).topk(min(k, len(chunk)), dim=1)
            # The running top-k and this chunk's top-k hold the top-k of everything seen so far.
            top_sim, keep = torch.cat([top_sim, sim], dim=1).topk(min(k, top_sim.shape[1] + sim.shape[1]), dim=1)
            top_label = torch.cat([top_label, bank_labels[start + index]], dim=1).gather(1, keep)
        votes = torch.zeros(len(query), num_classes, device=bank.device)
        scores.append(votes.scatter_add_(1, top_label, (top_sim / temperature).exp()))
    return torch.cat(scores)
