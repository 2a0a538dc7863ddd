"""Labels for synthetic images: balanced for conditional generators, pseudo-labels otherwise.

Sample q of a synthetic set is meant to be of class ``q mod K``, so every shard (and the whole
set) is balanced. A conditional generator is asked for exactly those classes. An unconditional
one is labelled by a classifier trained on real data, ``y = argmax f(x)`` with confidence
``max softmax f(x)``; with a quota image q is a candidate of class ``q mod K`` (how candidates
are drawn and assigned, per block, is in images.py).
"""

from __future__ import annotations

import torch


def balanced_labels(first: int, count: int, num_classes: int) -> torch.Tensor:
    return torch.arange(first, first + count) % num_classes


@torch.no_grad()
def classify(classifier, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of a classifier (in eval mode) for uint8 images."""
    device = next(classifier.parameters()).device
    return classifier(images.to(device)).float().softmax(1).cpu()
